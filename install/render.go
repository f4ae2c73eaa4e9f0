package install

import (
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"

	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"
	"helm.sh/helm/v3/pkg/releaseutil"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// ChartFS is the sidewall chart, rooted at helm/sidewall.
//
//go:embed all:helm/sidewall
var ChartFS embed.FS

const chartRoot = "helm/sidewall"

// DefaultNamespace is where the docs and the kind demo install sidewall.
const DefaultNamespace = "sidewall"

// DefaultKubeVersion is the Kubernetes version templates see when
// RenderOptions.KubeVersion is empty: the one envtest runs.
const DefaultKubeVersion = "v1.36.3"

// RenderOptions are what `helm template` takes on its command line.
type RenderOptions struct {
	// ReleaseName defaults to "sidewall", Namespace to DefaultNamespace.
	ReleaseName, Namespace string
	// Values override values.yaml, like `helm install -f`.
	Values map[string]any
	// KubeVersion is the cluster's version (.Capabilities.KubeVersion).
	KubeVersion string
}

// Rendered is the chart rendered for one release.
type Rendered struct {
	// CRDs are the chart's crds/ files, which Helm applies first.
	CRDs []*unstructured.Unstructured
	// Objects are the templates' objects in Helm's install order.
	Objects []*unstructured.Unstructured
	// Notes is NOTES.txt as rendered.
	Notes string
}

// LoadChart loads the embedded chart.
func LoadChart() (*chart.Chart, error) {
	var files []*loader.BufferedFile
	err := fs.WalkDir(ChartFS, chartRoot, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		data, err := ChartFS.ReadFile(p)
		if err != nil {
			return err
		}
		files = append(files, &loader.BufferedFile{Name: strings.TrimPrefix(p, chartRoot+"/"), Data: data})
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("read embedded chart: %w", err)
	}
	ch, err := loader.LoadFiles(files)
	if err != nil {
		return nil, fmt.Errorf("load chart: %w", err)
	}
	return ch, nil
}

// Render renders the chart as `helm install --dry-run` would: values are
// checked against values.schema.json, templates run in strict mode (a
// missing value is an error) and every object is parsed.
func Render(opts RenderOptions) (*Rendered, error) {
	if opts.ReleaseName == "" {
		opts.ReleaseName = "sidewall"
	}
	if opts.Namespace == "" {
		opts.Namespace = DefaultNamespace
	}
	if opts.KubeVersion == "" {
		opts.KubeVersion = DefaultKubeVersion
	}
	ch, err := LoadChart()
	if err != nil {
		return nil, err
	}
	kv, err := chartutil.ParseKubeVersion(opts.KubeVersion)
	if err != nil {
		return nil, fmt.Errorf("kube version %q: %w", opts.KubeVersion, err)
	}
	if ch.Metadata.KubeVersion != "" && !chartutil.IsCompatibleRange(ch.Metadata.KubeVersion, kv.String()) {
		return nil, fmt.Errorf("chart requires kubeVersion %s, cluster is %s", ch.Metadata.KubeVersion, kv.String())
	}
	caps := chartutil.DefaultCapabilities.Copy()
	caps.KubeVersion = *kv
	vals, err := chartutil.ToRenderValues(ch, opts.Values, chartutil.ReleaseOptions{
		Name: opts.ReleaseName, Namespace: opts.Namespace, Revision: 1, IsInstall: true,
	}, caps)
	if err != nil {
		return nil, fmt.Errorf("values: %w", err)
	}
	files, err := engine.Engine{Strict: true}.Render(ch, vals)
	if err != nil {
		return nil, fmt.Errorf("render chart: %w", err)
	}

	out := &Rendered{}
	for _, f := range ch.CRDObjects() {
		objs, err := parseManifests(f.Filename, string(f.File.Data))
		if err != nil {
			return nil, err
		}
		out.CRDs = append(out.CRDs, objs...)
	}
	manifests := map[string]string{}
	for name, content := range files {
		if strings.HasSuffix(name, "NOTES.txt") {
			out.Notes = content
			continue
		}
		if path.Ext(name) == ".yaml" && strings.TrimSpace(content) != "" {
			manifests[name] = content
		}
	}
	hooks, sorted, err := releaseutil.SortManifests(manifests, caps.APIVersions, releaseutil.InstallOrder)
	if err != nil {
		return nil, fmt.Errorf("sort manifests: %w", err)
	}
	if len(hooks) > 0 {
		return nil, errors.New("chart has hooks: the install tests do not cover them")
	}
	for _, m := range sorted {
		objs, err := parseManifests(m.Name, m.Content)
		if err != nil {
			return nil, err
		}
		out.Objects = append(out.Objects, objs...)
	}
	return out, nil
}

// parseManifests parses one or more YAML documents into objects.
func parseManifests(name, content string) ([]*unstructured.Unstructured, error) {
	docs := releaseutil.SplitManifests(content)
	keys := make([]string, 0, len(docs))
	for k := range docs {
		keys = append(keys, k)
	}
	// SplitManifests names documents manifest-0, -1, ...; keep file order.
	sort.Slice(keys, func(i, j int) bool { return manifestIndex(keys[i]) < manifestIndex(keys[j]) })
	var out []*unstructured.Unstructured
	for _, k := range keys {
		doc := docs[k]
		if len(bytes.TrimSpace([]byte(doc))) == 0 {
			continue
		}
		obj := map[string]any{}
		if err := yaml.UnmarshalStrict([]byte(doc), &obj); err != nil {
			return nil, fmt.Errorf("parse %s: %w", name, err)
		}
		if len(obj) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: obj}
		if u.GetKind() == "" || u.GetAPIVersion() == "" {
			return nil, fmt.Errorf("parse %s: object without kind or apiVersion", name)
		}
		out = append(out, u)
	}
	return out, nil
}

func manifestIndex(key string) int {
	var n int
	fmt.Sscanf(strings.TrimPrefix(key, "manifest-"), "%d", &n)
	return n
}
