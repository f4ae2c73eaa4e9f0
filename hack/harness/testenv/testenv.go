package testenv

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	ciliumcrds "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/client/crds/v2"
	ciliumalphacrds "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/client/crds/v2alpha1"
	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	"github.com/go-logr/logr"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	"sigs.k8s.io/yaml"

	"github.com/sidewall/sidewall/crds"
	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/hack/harness"
)

// ErrBinariesMissing is returned when kube-apiserver or etcd is not where
// envtest looks for it.
var ErrBinariesMissing = errors.New("envtest binaries missing: run `make tools` (it builds bin/k8s/kube-apiserver and bin/k8s/etcd) or point KUBEBUILDER_ASSETS at a directory holding both")

// Options tune Start and New. The zero value installs every CRD.
type Options struct {
	// SkipCiliumCRDs leaves Cilium's CRDs out, for testing what sidewall
	// does on a cluster without Cilium.
	SkipCiliumCRDs bool
	// AttachOutput copies kube-apiserver and etcd output to this process's
	// stdout and stderr (KUBEBUILDER_ATTACH_CONTROL_PLANE_OUTPUT=true does
	// the same).
	AttachOutput bool
}

// Env is a running control plane. Stop it when done; New does so through
// t.Cleanup.
type Env struct {
	// Config reaches the API server as a system:masters user.
	Config *rest.Config
	// Client uses Scheme.
	Client client.Client
	// Scheme knows the core Kubernetes types, apiextensions/v1, sidewall's
	// v1alpha1 and Cilium's v2 types.
	Scheme *runtime.Scheme
	// Kubeconfig is the path of a kubeconfig file for Config, for kubectl
	// and for processes started by a test or the demo.
	Kubeconfig string

	env      *envtest.Environment
	dir      string
	stopOnce sync.Once
	stopErr  error
}

var setLoggerOnce sync.Once

// New starts an Env for one test and stops it in t.Cleanup, even when the
// test fails. It skips the test unless integration tests are asked for
// (harness.RequireIntegration), and fails it, naming `make tools`, when the
// binaries are missing.
func New(t testing.TB, opts Options) *Env {
	t.Helper()
	harness.RequireIntegration(t)
	e, err := Start(opts)
	if err != nil {
		t.Fatalf("start envtest: %v", err)
	}
	t.Cleanup(func() {
		if err := e.Stop(); err != nil {
			t.Errorf("stop envtest: %v", err)
		}
	})
	return e
}

// Start starts kube-apiserver and etcd, installs the CRDs and waits until
// they are served. Callers must call Stop.
func Start(opts Options) (*Env, error) {
	setLoggerOnce.Do(func() {
		// controller-runtime complains loudly when no logger is set; the
		// caller may still set its own before calling Start.
		ctrl.SetLogger(logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, nil)))
	})

	assets, err := AssetsDir()
	if err != nil {
		return nil, err
	}
	scheme, err := NewScheme()
	if err != nil {
		return nil, err
	}
	defs, err := SidewallCRDs()
	if err != nil {
		return nil, err
	}
	if !opts.SkipCiliumCRDs {
		cilium, err := CiliumCRDs()
		if err != nil {
			return nil, err
		}
		defs = append(defs, cilium...)
	}

	env := &envtest.Environment{
		Scheme:                   scheme,
		CRDs:                     defs,
		BinaryAssetsDirectory:    assets,
		AttachControlPlaneOutput: opts.AttachOutput,
	}
	env.ControlPlane.GetAPIServer().Path = filepath.Join(assets, "kube-apiserver")
	env.ControlPlane.Etcd = &envtest.Etcd{Path: filepath.Join(assets, "etcd")}

	cfg, err := env.Start()
	if err != nil {
		// Start can fail after the processes are up (CRD install), so
		// stop whatever did start.
		_ = env.Stop()
		return nil, fmt.Errorf("start control plane: %w", err)
	}
	e := &Env{Config: cfg, Scheme: scheme, env: env}

	if e.Client, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		_ = e.Stop()
		return nil, fmt.Errorf("create client: %w", err)
	}
	if e.dir, err = os.MkdirTemp("", "sidewall-envtest-"); err != nil {
		_ = e.Stop()
		return nil, fmt.Errorf("create kubeconfig dir: %w", err)
	}
	e.Kubeconfig = filepath.Join(e.dir, "kubeconfig")
	if err := os.WriteFile(e.Kubeconfig, env.KubeConfig, 0o600); err != nil {
		_ = e.Stop()
		return nil, fmt.Errorf("write kubeconfig: %w", err)
	}
	return e, nil
}

// Stop stops the control plane and removes its files. It is safe to call
// more than once.
func (e *Env) Stop() error {
	e.stopOnce.Do(func() {
		e.stopErr = e.env.Stop()
		if e.dir != "" {
			if err := os.RemoveAll(e.dir); err != nil && e.stopErr == nil {
				e.stopErr = fmt.Errorf("remove kubeconfig dir: %w", err)
			}
		}
	})
	return e.stopErr
}

// NewScheme returns a scheme with the core Kubernetes types,
// apiextensions/v1, sidewall's v1alpha1 and Cilium's v2 types.
func NewScheme() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	for name, add := range map[string]func(*runtime.Scheme) error{
		"kubernetes":        clientgoscheme.AddToScheme,
		"apiextensions/v1":  apiextensionsv1.AddToScheme,
		"sidewall v1alpha1": v1alpha1.AddToScheme,
		"cilium v2":         ciliumv2.AddToScheme,
	} {
		if err := add(s); err != nil {
			return nil, fmt.Errorf("add %s types to scheme: %w", name, err)
		}
	}
	return s, nil
}

// AssetsDir returns the directory holding kube-apiserver and etcd:
// $KUBEBUILDER_ASSETS if set, else bin/k8s at the root of the sidewall
// repository that holds the working directory. The error wraps
// ErrBinariesMissing when either binary is absent.
func AssetsDir() (string, error) {
	dir := os.Getenv("KUBEBUILDER_ASSETS")
	if dir == "" {
		root, err := harness.RepoRoot()
		if err != nil {
			return "", fmt.Errorf("KUBEBUILDER_ASSETS is unset and %w; %w", err, ErrBinariesMissing)
		}
		dir = filepath.Join(root, "bin", "k8s")
	}
	for _, name := range []string{"kube-apiserver", "etcd"} {
		p := filepath.Join(dir, name)
		st, err := os.Stat(p)
		if err != nil {
			return "", fmt.Errorf("%s: %w", p, ErrBinariesMissing)
		}
		if st.IsDir() || st.Mode()&0o111 == 0 {
			return "", fmt.Errorf("%s is not an executable file: %w", p, ErrBinariesMissing)
		}
	}
	return dir, nil
}

// SidewallCRDs returns sidewall's generated CRDs (crds/bases).
func SidewallCRDs() ([]*apiextensionsv1.CustomResourceDefinition, error) {
	defs, err := crds.CustomResourceDefinitions()
	if err != nil {
		return nil, fmt.Errorf("read sidewall CRDs (run `make generate` if crds/bases is empty): %w", err)
	}
	return defs, nil
}

// CiliumCRDs returns every cilium.io/v2 CRD shipped in the cilium module
// (CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, CiliumEndpoint,
// CiliumIdentity, CiliumNode, ...), exactly as Cilium installs them.
func CiliumCRDs() ([]*apiextensionsv1.CustomResourceDefinition, error) {
	defs, err := readCRDs(ciliumcrds.EmbedFS)
	if err != nil {
		return nil, fmt.Errorf("read cilium CRDs: %w", err)
	}
	// The v2alpha1 ones are registered by cilium-operator in a cluster;
	// a cilium-agent waits for them (the Cilium node of localnode).
	alpha, err := readCRDs(ciliumalphacrds.EmbedFS)
	if err != nil {
		return nil, fmt.Errorf("read cilium v2alpha1 CRDs: %w", err)
	}
	return append(defs, alpha...), nil
}

func readCRDs(fsys fs.FS) ([]*apiextensionsv1.CustomResourceDefinition, error) {
	var defs []*apiextensionsv1.CustomResourceDefinition
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() || (path.Ext(p) != ".yaml" && path.Ext(p) != ".yml") {
			return nil
		}
		raw, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		// Each file holds one CRD, possibly after a leading "---".
		for _, doc := range strings.Split(string(raw), "\n---") {
			doc = strings.TrimPrefix(strings.TrimSpace(doc), "---")
			if strings.TrimSpace(doc) == "" {
				continue
			}
			crd := &apiextensionsv1.CustomResourceDefinition{}
			if err := yaml.UnmarshalStrict([]byte(doc), crd); err != nil {
				return fmt.Errorf("decode %s: %w", p, err)
			}
			if crd.Kind != "CustomResourceDefinition" {
				return fmt.Errorf("decode %s: kind is %q, want CustomResourceDefinition", p, crd.Kind)
			}
			defs = append(defs, crd)
		}
		return nil
	})
	return defs, err
}
