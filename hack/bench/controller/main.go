package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	slim_metav1 "github.com/cilium/cilium/pkg/k8s/slim/k8s/apis/meta/v1"
	"github.com/cilium/cilium/pkg/policy/api"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/hack/harness/proc"
	"github.com/sidewall/sidewall/hack/harness/testenv"
	"github.com/sidewall/sidewall/translator"
)

const (
	targetConverge = 60 * time.Second
	targetMemoryMB = 200.0
)

func main() {
	var (
		policies   = flag.Int("policies", 1000, "ContainerNetworkPolicies to create")
		namespaces = flag.Int("namespaces", 20, "namespaces to spread them over")
		pods       = flag.Int("pods", 5, "pods per namespace, one per workload app=web-N, each with an init, a sidecar and an app container; policy i selects workload i mod pods")
		binary     = flag.String("controller", "", "prebuilt sidewall-controller binary (default: go build ./cmd/sidewall-controller)")
		timeout    = flag.Duration("timeout", 5*time.Minute, "give up after this long")
		writers    = flag.Int("writers", 8, "concurrent clients creating the policies")
		logTo      = flag.String("log", "", "write the controller's log to this file (default: a temporary file, shown on failure)")
		workers    = flag.Int("max-concurrent-reconciles", 0, "passed to the controller when set (default: the controller's default)")
	)
	flag.Parse()
	var extra []string
	if *workers > 0 {
		extra = append(extra, fmt.Sprintf("--max-concurrent-reconciles=%d", *workers))
	}
	if err := run(*policies, *namespaces, *pods, *writers, *binary, *logTo, *timeout, extra); err != nil {
		fmt.Fprintln(os.Stderr, "bench controller:", err)
		os.Exit(1)
	}
}

func run(nPolicies, nNamespaces, nPods, writers int, binary, logPath string, timeout time.Duration, extraArgs []string) error {
	if nPolicies < 1 || nNamespaces < 1 || nNamespaces > nPolicies || writers < 1 {
		return fmt.Errorf("need policies >= namespaces >= 1 and writers >= 1")
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()

	tmp, err := os.MkdirTemp("", "sidewall-bench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	if binary == "" {
		binary = filepath.Join(tmp, "sidewall-controller")
		fmt.Fprintln(os.Stderr, ">> building sidewall-controller")
		build := exec.CommandContext(ctx, "go", "build", "-o", binary, "./cmd/sidewall-controller")
		build.Dir, err = moduleRoot()
		if err != nil {
			return err
		}
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		if err := build.Run(); err != nil {
			return fmt.Errorf("build controller: %w", err)
		}
	}

	fmt.Fprintln(os.Stderr, ">> starting kube-apiserver and etcd")
	env, err := testenv.Start(testenv.Options{})
	if err != nil {
		return err
	}
	defer env.Stop()
	c := env.Client

	// Namespaces and pods exist before the controller starts, as in a
	// cluster that adopts sidewall.
	nsNames := make([]string, nNamespaces)
	for i := range nsNames {
		nsNames[i] = fmt.Sprintf("bench-%02d", i)
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: nsNames[i]}}); err != nil {
			return fmt.Errorf("create namespace: %w", err)
		}
		for j := 0; j < nPods; j++ {
			if err := c.Create(ctx, webPod(nsNames[i], fmt.Sprintf("web-%d", j), j)); err != nil {
				return fmt.Errorf("create pod: %w", err)
			}
		}
	}

	probe, err := proc.FreePort()
	if err != nil {
		return err
	}

	if logPath == "" {
		logPath = filepath.Join(tmp, "controller.log")
	}
	logFile, err := os.Create(logPath)
	if err != nil {
		return err
	}
	defer logFile.Close()
	args := append([]string{
		"--kubeconfig", env.Kubeconfig,
		"--leader-elect=false",
		"--metrics-bind-address", "0",
		"--health-probe-bind-address", fmt.Sprintf("127.0.0.1:%d", probe),
	}, extraArgs...)
	ctrl := exec.Command(binary, args...)
	ctrl.Stdout, ctrl.Stderr = logFile, logFile
	// The controller must not outlive this program, even if it is killed.
	ctrl.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := ctrl.Start(); err != nil {
		return fmt.Errorf("start controller: %w", err)
	}
	exited := make(chan error, 1)
	go func() { exited <- ctrl.Wait() }()
	defer func() {
		_ = ctrl.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(20 * time.Second):
			_ = ctrl.Process.Kill()
		}
	}()
	if err := waitReady(ctx, probe, exited); err != nil {
		return fmt.Errorf("%w (controller log: %s)", err, tail(logPath))
	}
	fmt.Fprintf(os.Stderr, ">> controller ready (pid %d); creating %d policies in %d namespaces\n", ctrl.Process.Pid, nPolicies, nNamespaces)

	start := time.Now()
	if err := createPolicies(ctx, c, nsNames, nPolicies, max(nPods, 1), writers); err != nil {
		return err
	}
	created := time.Since(start)

	var lastProgress string
	for {
		elapsed := time.Since(start).Round(time.Second)
		done, progress, err := converged(ctx, c, nPolicies)
		if err != nil {
			return err
		}
		if done {
			break
		}
		if progress != lastProgress {
			fmt.Fprintln(os.Stderr, ">>", elapsed, progress)
			lastProgress = progress
		}
		select {
		case err := <-exited:
			return fmt.Errorf("controller exited: %v (log: %s)", err, tail(logPath))
		case <-ctx.Done():
			return fmt.Errorf("not converged after %s: %s", timeout, progress)
		case <-time.After(250 * time.Millisecond):
		}
	}
	converge := time.Since(start)

	hwm, rss, err := proc.Memory(ctrl.Process.Pid)
	if err != nil {
		return err
	}
	cpu, err := proc.CPUTime(ctrl.Process.Pid)
	if err != nil {
		return err
	}
	fmt.Printf("controller: %d policies in %d namespaces (%d pods) created in %.1fs\n", nPolicies, nNamespaces, nNamespaces*nPods, created.Seconds())
	fmt.Printf("controller convergence: %d ContainerNetworkPolicies -> %d valid CiliumNetworkPolicies in %.1fs (target < %.0fs, ratio %.2f)\n",
		nPolicies, nPolicies, converge.Seconds(), targetConverge.Seconds(), converge.Seconds()/targetConverge.Seconds())
	fmt.Printf("controller CPU time until converged: %.1fs (user+system)\n", cpu.Seconds())
	for _, name := range []string{"kube-apiserver", "etcd"} {
		if pid, err := childNamed(name); err == nil {
			if cpu, err := proc.CPUTime(pid); err == nil {
				fmt.Printf("%s CPU time (whole run, for comparison): %.1fs\n", name, cpu.Seconds())
			}
		}
	}
	fmt.Printf("controller peak memory: VmHWM %.1f MB, VmRSS now %.1f MB (target < %.0f MB, ratio %.2f)\n",
		hwm, rss, targetMemoryMB, hwm/targetMemoryMB)
	return nil
}

// typicalPolicy has ten rules, two of them with L7 HTTP rules, and
// restricts either the log-shipper sidecar or the app container of one of
// the namespace's workloads; with the defaults ten policies share each
// workload, so L7 precision is computed across policies.
func typicalPolicy(ns string, i, workloads int) *v1alpha1.ContainerNetworkPolicy {
	ep := func(kv ...string) api.EndpointSelector {
		m := map[string]string{}
		for j := 0; j+1 < len(kv); j += 2 {
			m[kv[j]] = kv[j+1]
		}
		return api.NewESFromMatchRequirements(m, nil)
	}
	ports := func(port string, proto api.L4Proto) []v1alpha1.PortRule {
		return []v1alpha1.PortRule{{Ports: []v1alpha1.PortProtocol{{Port: port, Protocol: proto}}}}
	}
	withHTTP := func(pr []v1alpha1.PortRule, method, path string) []v1alpha1.PortRule {
		pr[0].Rules = &api.L7Rules{HTTP: []api.PortRuleHTTP{{Method: method, Path: path}}}
		return pr
	}
	containers := v1alpha1.ContainerSelector{Names: []string{"log-shipper"}}
	if i%2 == 1 {
		containers = v1alpha1.ContainerSelector{Roles: []v1alpha1.ContainerRole{v1alpha1.RoleApp}}
	}
	port := strconv.Itoa(8000 + i%1000)
	return &v1alpha1.ContainerNetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("policy-%04d", i)},
		Spec: v1alpha1.ContainerNetworkPolicySpec{
			PodSelector: slim_metav1.LabelSelector{MatchLabels: map[string]string{"app": fmt.Sprintf("web-%d", i%workloads)}},
			Containers:  containers,
			Egress: []v1alpha1.EgressRule{
				{EgressCommonRule: api.EgressCommonRule{ToEndpoints: []api.EndpointSelector{ep("app", "db")}}, ToPorts: ports("5432", api.ProtoTCP)},
				{EgressCommonRule: api.EgressCommonRule{ToEndpoints: []api.EndpointSelector{ep("app", "cache")}}, ToPorts: ports("6379", api.ProtoTCP)},
				{EgressCommonRule: api.EgressCommonRule{ToEntities: api.EntitySlice{api.EntityWorld}}, ToPorts: ports("443", api.ProtoTCP)},
				{EgressCommonRule: api.EgressCommonRule{ToCIDRSet: api.CIDRRuleSlice{{Cidr: "10.0.0.0/8", ExceptCIDRs: []api.CIDR{"10.1.0.0/16"}}}}, ToPorts: ports("53", api.ProtoUDP)},
				{EgressCommonRule: api.EgressCommonRule{ToEndpoints: []api.EndpointSelector{ep("app", "api")}}, ToPorts: withHTTP(ports(port, api.ProtoTCP), "GET", "/v1/.*")},
				{EgressCommonRule: api.EgressCommonRule{ToEndpoints: []api.EndpointSelector{ep("app", "logs")}}, ToPorts: withHTTP(ports("9200", api.ProtoTCP), "POST", "/_bulk")},
				{EgressCommonRule: api.EgressCommonRule{ToEndpoints: []api.EndpointSelector{ep("k8s:io.kubernetes.pod.namespace", "kube-system", "k8s-app", "kube-dns")}}, ToPorts: ports("53", api.ProtoAny)},
			},
			Ingress: []v1alpha1.IngressRule{
				{IngressCommonRule: api.IngressCommonRule{FromEndpoints: []api.EndpointSelector{ep("app", "frontend")}}, ToPorts: ports("8080", api.ProtoTCP)},
				{IngressCommonRule: api.IngressCommonRule{FromEntities: api.EntitySlice{api.EntityCluster}}, ToPorts: ports("9090", api.ProtoTCP)},
			},
			EgressDeny: []v1alpha1.EgressDenyRule{
				{EgressCommonRule: api.EgressCommonRule{ToCIDR: api.CIDRSlice{"169.254.169.254/32"}}},
			},
		},
	}
}

func webPod(ns, name string, workload int) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{"app": fmt.Sprintf("web-%d", workload)}},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{
				{Name: "migrate", Image: "migrate"},
				{Name: "log-shipper", Image: "shipper", RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways)},
			},
			Containers: []corev1.Container{{Name: "app", Image: "app"}},
		},
	}
}

func createPolicies(ctx context.Context, c client.Client, namespaces []string, n, workloads, writers int) error {
	work := make(chan int)
	errs := make(chan error, writers)
	var wg sync.WaitGroup
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range work {
				if err := c.Create(ctx, typicalPolicy(namespaces[i%len(namespaces)], i, workloads)); err != nil {
					errs <- fmt.Errorf("create policy %d: %w", i, err)
					return
				}
			}
		}()
	}
	var err error
feed:
	for i := 0; i < n; i++ {
		select {
		case work <- i:
		case err = <-errs:
			break feed
		}
	}
	close(work)
	wg.Wait()
	if err == nil {
		select {
		case err = <-errs:
		default:
		}
	}
	return err
}

// converged reports whether every policy is Ready for its generation and
// has a CNP that Cilium's parser accepts.
func converged(ctx context.Context, c client.Client, want int) (bool, string, error) {
	var policies v1alpha1.ContainerNetworkPolicyList
	if err := c.List(ctx, &policies); err != nil {
		return false, "", fmt.Errorf("list policies: %w", err)
	}
	var cnps ciliumv2.CiliumNetworkPolicyList
	if err := c.List(ctx, &cnps, client.MatchingLabels{translator.LabelManagedBy: translator.ManagedBy}); err != nil {
		return false, "", fmt.Errorf("list CNPs: %w", err)
	}
	have := map[string]*ciliumv2.CiliumNetworkPolicy{}
	for i := range cnps.Items {
		have[cnps.Items[i].Namespace+"/"+cnps.Items[i].Name] = &cnps.Items[i]
	}
	ready, withCNP := 0, 0
	for i := range policies.Items {
		p := &policies.Items[i]
		if c := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.ConditionReady); c != nil &&
			c.Status == metav1.ConditionTrue && c.ObservedGeneration == p.Generation {
			ready++
		}
		if cnp, ok := have[p.Namespace+"/"+translator.CNPName(p.Name)]; ok {
			if err := translator.SanitizeCNP(cnp); err != nil {
				return false, "", fmt.Errorf("CNP %s/%s refused by Cilium's parser: %w", cnp.Namespace, cnp.Name, err)
			}
			withCNP++
		}
	}
	progress := fmt.Sprintf("%d/%d policies, %d with a CNP, %d Ready", len(policies.Items), want, withCNP, ready)
	return len(policies.Items) == want && withCNP == want && ready == want, progress, nil
}

func waitReady(ctx context.Context, port int, exited <-chan error) error {
	url := fmt.Sprintf("http://127.0.0.1:%d/readyz", port)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-exited:
			return fmt.Errorf("controller exited before ready: %v", err)
		case <-ctx.Done():
			return errors.New("controller not ready in time")
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// childNamed finds a child process of this one by command name; envtest
// starts kube-apiserver and etcd as children.
func childNamed(name string) (int, error) {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, st := range stats {
		b, err := os.ReadFile(st)
		if err != nil {
			continue
		}
		s := string(b)
		open, closing := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
		if open < 0 || closing < open {
			continue
		}
		fields := strings.Fields(s[closing+1:])
		if len(fields) < 2 || s[open+1:closing] != name || fields[1] != strconv.Itoa(os.Getpid()) {
			continue
		}
		return strconv.Atoi(strings.Fields(s)[0])
	}
	return 0, fmt.Errorf("no child process %s", name)
}

func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", errors.New("run from inside the sidewall module")
	}
	return filepath.Dir(mod), nil
}

func tail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}
