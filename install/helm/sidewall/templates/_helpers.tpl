{{/* Common labels of every object. */}}
{{- define "sidewall.labels" -}}
app.kubernetes.io/part-of: sidewall
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "sidewall.controller.name" -}}sidewall-controller{{- end -}}
{{- define "sidewall.agent.name" -}}sidewall-agent{{- end -}}

{{- define "sidewall.controller.selector" -}}
app.kubernetes.io/name: sidewall-controller
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sidewall.agent.selector" -}}
app.kubernetes.io/name: sidewall-agent
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* image renders [registry/]repository:tag; call with (list $ .Values.controller.image). */}}
{{- define "sidewall.image" -}}
{{- $root := index . 0 -}}
{{- $img := index . 1 -}}
{{- $tag := $root.Values.image.tag | default $root.Chart.AppVersion -}}
{{- if $root.Values.image.registry -}}
{{- printf "%s/%s:%s" (trimSuffix "/" $root.Values.image.registry) $img.repository $tag -}}
{{- else -}}
{{- printf "%s:%s" $img.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
validate fails the render on combinations the schema cannot express.
*/}}
{{- define "sidewall.validate" -}}
{{- $probe := int .Values.controller.probes.port -}}
{{- $metrics := int .Values.controller.metrics.port -}}
{{- if eq $probe $metrics -}}
{{- fail (printf "controller.probes.port and controller.metrics.port must differ (both %d)" $probe) -}}
{{- end -}}
{{- $hubble := .Values.agent.hubble -}}
{{- if and $hubble.enabled $hubble.listenAddress (not (regexMatch "^(127\\.[0-9]+\\.[0-9]+\\.[0-9]+|\\[::1\\]|localhost):[0-9]+$" $hubble.listenAddress)) -}}
{{- fail (printf "agent.hubble.listenAddress %q must be a loopback address with a port (the Hubble API has no authentication; use kubectl port-forward to reach it)" $hubble.listenAddress) -}}
{{- end -}}
{{- if and (eq .Values.agent.identitySource "cilium") (not .Values.clusterName) -}}
{{- fail "clusterName must be set when agent.identitySource is cilium" -}}
{{- end -}}
{{- end -}}
