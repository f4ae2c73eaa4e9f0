package controller

import (
	"fmt"

	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/translator"
)

// NewScheme returns a scheme with the core Kubernetes types, sidewall's
// v1alpha1 and Cilium's v2 types: all the controller reads or writes.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("add kubernetes types to scheme: %w", err)
	}
	if err := v1alpha1.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("add sidewall types to scheme: %w", err)
	}
	if err := ciliumv2.AddToScheme(s); err != nil {
		return nil, fmt.Errorf("add cilium types to scheme: %w", err)
	}
	return s, nil
}

// ConfigureManager sets the cache options the controller relies on for
// memory: pods keep only what selection and container analysis read,
// admission objects are cached only when sidewall generated them, and
// managed fields are dropped everywhere. Every CNP is cached: the CNP of a
// policy with HTTP rules depends on the pods' other policies.
func ConfigureManager(o *manager.Options) {
	if o.Cache.ByObject == nil {
		o.Cache.ByObject = map[client.Object]cache.ByObject{}
	}
	managed := labels.SelectorFromSet(labels.Set{translator.LabelManagedBy: translator.ManagedBy})
	o.Cache.ByObject[&admissionv1.ValidatingAdmissionPolicy{}] = cache.ByObject{Label: managed}
	o.Cache.ByObject[&admissionv1.ValidatingAdmissionPolicyBinding{}] = cache.ByObject{Label: managed}
	o.Cache.ByObject[&corev1.Pod{}] = cache.ByObject{Transform: trimPod}
	o.Cache.DefaultTransform = cache.TransformStripManagedFields()
}

// trimPod keeps the parts of a pod the controller reads: metadata for
// selection, the container lists for roles, names and ports, and what the
// breakout-risk analysis looks at (security contexts, volume mounts, host
// namespaces, hostPath volumes). Status, env, other volumes and the rest
// can be most of a pod's size.
func trimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil
	}
	trimmed := &corev1.Pod{
		TypeMeta: pod.TypeMeta,
		ObjectMeta: metav1.ObjectMeta{
			Name:              pod.Name,
			Namespace:         pod.Namespace,
			UID:               pod.UID,
			ResourceVersion:   pod.ResourceVersion,
			Generation:        pod.Generation,
			CreationTimestamp: pod.CreationTimestamp,
			DeletionTimestamp: pod.DeletionTimestamp,
			Labels:            pod.Labels,
			OwnerReferences:   pod.OwnerReferences,
		},
	}
	for _, c := range pod.Spec.InitContainers {
		trimmed.Spec.InitContainers = append(trimmed.Spec.InitContainers, corev1.Container{
			Name: c.Name, Ports: c.Ports, RestartPolicy: c.RestartPolicy,
			SecurityContext: c.SecurityContext, VolumeMounts: c.VolumeMounts,
		})
	}
	for _, c := range pod.Spec.Containers {
		trimmed.Spec.Containers = append(trimmed.Spec.Containers, corev1.Container{
			Name: c.Name, Ports: c.Ports, SecurityContext: c.SecurityContext, VolumeMounts: c.VolumeMounts,
		})
	}
	for _, c := range pod.Spec.EphemeralContainers {
		ec := corev1.EphemeralContainer{TargetContainerName: c.TargetContainerName}
		ec.Name, ec.Ports, ec.SecurityContext, ec.VolumeMounts = c.Name, c.Ports, c.SecurityContext, c.VolumeMounts
		trimmed.Spec.EphemeralContainers = append(trimmed.Spec.EphemeralContainers, ec)
	}
	for _, v := range pod.Spec.Volumes {
		if v.HostPath != nil {
			trimmed.Spec.Volumes = append(trimmed.Spec.Volumes, corev1.Volume{
				Name: v.Name, VolumeSource: corev1.VolumeSource{HostPath: v.HostPath},
			})
		}
	}
	trimmed.Spec.HostNetwork = pod.Spec.HostNetwork
	trimmed.Spec.HostPID = pod.Spec.HostPID
	trimmed.Spec.ShareProcessNamespace = pod.Spec.ShareProcessNamespace
	if psc := pod.Spec.SecurityContext; psc != nil {
		trimmed.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: psc.RunAsUser, RunAsNonRoot: psc.RunAsNonRoot}
	}
	trimmed.Spec.NodeName = pod.Spec.NodeName
	trimmed.Spec.ServiceAccountName = pod.Spec.ServiceAccountName
	trimmed.Status.Phase = pod.Status.Phase
	trimmed.Status.PodIPs = pod.Status.PodIPs
	return trimmed, nil
}
