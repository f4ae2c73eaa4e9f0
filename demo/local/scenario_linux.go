package main

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"sort"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	ciliumv2 "github.com/cilium/cilium/pkg/k8s/apis/cilium.io/v2"
	"github.com/cilium/cilium/pkg/policy/api"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/duration"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"github.com/sidewall/sidewall/crds/v1alpha1"
	"github.com/sidewall/sidewall/hack/harness"
	"github.com/sidewall/sidewall/hack/harness/localnode"
)

// requestTimeout bounds each connection of the matrix: a connection the
// datapath drops silently (a denied ingress SYN) shows as this timeout.
const requestTimeout = 2 * time.Second

// runScenario creates the shop: the web pod with its app and its native
// sidecar, and the two peers, each with real HTTP servers listening.
func (d *demo) runScenario(ctx context.Context) (err error) {
	done := d.progress("namespace shop: pods web (app + log-shipper sidecar), logging, payments, orders (app + telemetry sidecar), dns, saas, tracker")
	defer func() { done(err) }()
	always := corev1.ContainerRestartPolicyAlways
	pods := []*corev1.Pod{
		{
			ObjectMeta: metav1.ObjectMeta{Name: "logging", Labels: map[string]string{"app": "logging"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{
				{Name: "logging", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}},
			}},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "payments", Labels: map[string]string{"app": "payments"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{
				{Name: "payments", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}},
			}},
		},
		// Section 6: the orders pod's telemetry sidecar sends traces
		// by name; the shop's DNS server, and two endpoints outside the
		// shop it may and may not reach by name.
		{
			ObjectMeta: metav1.ObjectMeta{Name: "orders", Labels: map[string]string{"app": "orders"}},
			Spec: corev1.PodSpec{
				InitContainers: []corev1.Container{{Name: "telemetry", RestartPolicy: &always}},
				Containers:     []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}},
			},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "dns", Labels: map[string]string{"app": "dns"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{
				{Name: "dns", Ports: []corev1.ContainerPort{{Name: "dns", ContainerPort: dnsPort, Protocol: corev1.ProtocolUDP}}},
			}},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "saas", Labels: map[string]string{"app": "saas"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{
				{Name: "ingest", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}},
			}},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "tracker", Labels: map[string]string{"app": "tracker"}},
			Spec: corev1.PodSpec{Containers: []corev1.Container{
				{Name: "collector", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}},
			}},
		},
		{
			ObjectMeta: metav1.ObjectMeta{Name: "web", Labels: map[string]string{"app": "web"}},
			Spec: corev1.PodSpec{
				InitContainers: []corev1.Container{{Name: "log-shipper", RestartPolicy: &always}},
				Containers: []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{
					{Name: "http", ContainerPort: 8080}, {Name: "admin", ContainerPort: 9090},
				}}},
			},
		},
	}
	for _, p := range pods {
		p.Namespace = namespace
		lp, err := d.node.RunPod(ctx, p)
		if err != nil {
			return fmt.Errorf("run pod %s: %w", p.Name, err)
		}
		d.pods[p.Name] = lp
	}
	servers := []struct {
		pod, container string
		port           int
	}{
		{"logging", "logging", 8080},
		{"payments", "payments", 8080},
		{"orders", "app", 8080},
		{"saas", "ingest", 8080},
		{"tracker", "collector", 8080},
		{"web", "app", 8080},
		{"web", "app", 9090},
	}
	for _, s := range servers {
		if _, err := d.node.Listen(ctx, d.pods[s.pod], s.container, "http", s.port); err != nil {
			return fmt.Errorf("start HTTP server in %s/%s on %d: %w", s.pod, s.container, s.port, err)
		}
	}
	records := map[string]netip.Addr{saasName: d.pods["saas"].IP, trackerName: d.pods["tracker"].IP}
	if _, err := d.node.ServeDNS(ctx, d.pods["dns"], "dns", dnsPort, records); err != nil {
		return fmt.Errorf("start the DNS server in dns/dns: %w", err)
	}
	done(nil)
	done = func(error) {}
	w := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "    POD\tIP\tCONTAINERS")
	for _, name := range []string{"web", "logging", "payments", "orders", "dns", "saas", "tracker"} {
		p := d.pods[name]
		var cs []string
		for _, c := range p.Containers() {
			desc := c.Name
			if c.Role == "sidecar" {
				desc += " (native sidecar)"
			}
			cs = append(cs, desc)
		}
		fmt.Fprintf(w, "    %s/%s\t%s\t%s\n", namespace, name, p.IP, strings.Join(cs, ", "))
	}
	return w.Flush()
}

// policies decodes policyYAML strictly, so a typo in it fails loudly.
func policies() ([]*v1alpha1.ContainerNetworkPolicy, error) {
	var out []*v1alpha1.ContainerNetworkPolicy
	for i, doc := range strings.Split(policyYAML, "\n---") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		p := &v1alpha1.ContainerNetworkPolicy{}
		if err := yaml.UnmarshalStrict([]byte(doc), p); err != nil {
			return nil, fmt.Errorf("policy.yaml document %d: %w", i+1, err)
		}
		p.Namespace = namespace
		out = append(out, p)
	}
	if len(out) == 0 {
		return nil, errors.New("policy.yaml holds no policy")
	}
	return out, nil
}

func (d *demo) applyPolicy(ctx context.Context) error {
	d.heading("1. The ContainerNetworkPolicies (kubectl apply -n shop -f fqdn-policy.yaml -f policy.yaml)")
	fmt.Fprintln(d.out, strings.TrimSpace(policyYAML))
	fmt.Fprintln(d.out, "---")
	fmt.Fprintln(d.out, strings.TrimSpace(fqdnPolicyYAML))
	ps, err := policies()
	if err != nil {
		return err
	}
	fp, err := fqdnPolicy()
	if err != nil {
		return err
	}
	fmt.Fprintln(d.out)
	// fqdn-policy.yaml goes first, and the demo waits until Cilium's DNS
	// proxy is in the orders pod's path. Here, where no Envoy runs,
	// Cilium's regeneration of the web pod (HTTP rules) stays
	// "regenerating": it waits up to 330 s for an Envoy acknowledgement
	// that never comes (EndpointGenerationTimeout). Cilium builds
	// endpoints on one worker per CPU, and on this 2-CPU machine the
	// regeneration of orders was seen to wait behind web's when it came
	// second.
	since := time.Now()
	if err := d.createPolicies(ctx, fp); err != nil {
		return err
	}
	if err := d.waitCiliumImported(ctx, since, fp.Name); err != nil {
		return err
	}
	if d.cilium {
		wctx, cancel := context.WithTimeout(ctx, waitLimit)
		err := d.node.WaitCiliumRedirect(wctx, d.pods["orders"].IP, "dns", dnsPort)
		cancel()
		if err != nil {
			return err
		}
	}
	since = time.Now()
	if err := d.createPolicies(ctx, ps...); err != nil {
		return err
	}
	var names []string
	for _, p := range ps {
		names = append(names, p.Name)
	}
	return d.waitCiliumImported(ctx, since, names...)
}

// createPolicies creates the policies, as kubectl apply does, and waits
// until the controller says each is Ready: the user's view of "applied".
func (d *demo) createPolicies(ctx context.Context, ps ...*v1alpha1.ContainerNetworkPolicy) error {
	for _, p := range ps {
		if err := d.env.Client.Create(ctx, p); err != nil {
			return fmt.Errorf("create policy %s: %w", p.Name, err)
		}
		fmt.Fprintf(d.out, "containernetworkpolicy.sidewall.io/%s created\n", p.Name)
	}
	return poll(ctx, "policies Ready", func() (bool, error) {
		for _, p := range ps {
			var cur v1alpha1.ContainerNetworkPolicy
			if err := d.env.Client.Get(ctx, client.ObjectKeyFromObject(p), &cur); err != nil {
				return false, fmt.Errorf("get policy %s: %w", p.Name, err)
			}
			ready := meta.FindStatusCondition(cur.Status.Conditions, v1alpha1.ConditionReady)
			if ready == nil || ready.Status != metav1.ConditionTrue || cur.Status.ObservedGeneration != cur.Generation {
				return false, nil
			}
		}
		return true, nil
	})
}

func (d *demo) listPolicies(ctx context.Context) ([]v1alpha1.ContainerNetworkPolicy, error) {
	var list v1alpha1.ContainerNetworkPolicyList
	if err := d.env.Client.List(ctx, &list, client.InNamespace(namespace)); err != nil {
		return nil, fmt.Errorf("list policies: %w", err)
	}
	sort.Slice(list.Items, func(i, j int) bool { return list.Items[i].Name < list.Items[j].Name })
	return list.Items, nil
}

// showGenerated prints each generated CNP as `kubectl get -o yaml` would,
// minus the server's bookkeeping fields, which say nothing about policy.
func (d *demo) showGenerated(ctx context.Context) error {
	d.heading("2. The CiliumNetworkPolicy the controller generated (Cilium and its Envoy enforce it, L7 included)")
	ps, err := d.listPolicies(ctx)
	if err != nil {
		return err
	}
	for _, p := range ps {
		if p.Status.GeneratedPolicy == "" {
			fmt.Fprintf(d.out, "# %s: no CiliumNetworkPolicy needed (its rules are between containers of one pod)\n", p.Name)
			continue
		}
		var cnp ciliumv2.CiliumNetworkPolicy
		key := client.ObjectKey{Namespace: namespace, Name: p.Status.GeneratedPolicy}
		if err := d.env.Client.Get(ctx, key, &cnp); err != nil {
			return fmt.Errorf("get generated policy %s: %w", key.Name, err)
		}
		cnp.APIVersion, cnp.Kind = ciliumv2.SchemeGroupVersion.String(), ciliumv2.CNPKindDefinition
		cnp.ObjectMeta = metav1.ObjectMeta{
			Name: cnp.Name, Namespace: cnp.Namespace, Labels: cnp.Labels, OwnerReferences: cnp.OwnerReferences,
		}
		cnp.Status = ciliumv2.CiliumNetworkPolicyStatus{}
		view := struct {
			metav1.TypeMeta   `json:",inline"`
			metav1.ObjectMeta `json:"metadata"`
			Spec              any `json:"spec,omitempty"`
			Specs             any `json:"specs,omitempty"`
		}{TypeMeta: cnp.TypeMeta, ObjectMeta: cnp.ObjectMeta}
		// Typed nils in an interface are not omitted: set only what is there.
		elided := 0
		if cnp.Spec != nil {
			// The complement's ICMP rules list every ICMP type: hundreds
			// of lines that say one thing.
			spec := cnp.Spec.DeepCopy()
			for i := range spec.Egress {
				elided += shortenICMPs(&spec.Egress[i].ICMPs)
			}
			for i := range spec.Ingress {
				elided += shortenICMPs(&spec.Ingress[i].ICMPs)
			}
			view.Spec = spec
		}
		if len(cnp.Specs) > 0 {
			view.Specs = cnp.Specs
		}
		raw, err := yaml.Marshal(view)
		if err != nil {
			return fmt.Errorf("print generated policy: %w", err)
		}
		fmt.Fprintf(d.out, "# from ContainerNetworkPolicy %s\n%s", p.Name, raw)
		if elided > 0 {
			fmt.Fprintf(d.out, "# (not shown: %d more icmps fields, one per ICMP and ICMPv6 type: ICMP to the L7 peer)\n", elided)
		}
		fmt.Fprintln(d.out, "---")
	}
	fmt.Fprintln(d.out, "Note: a CiliumNetworkPolicy selects whole pods (all containers share the pod's IP and identity);")
	fmt.Fprintln(d.out, "sidewall's BPF datapath tells the containers apart (section 4). Cilium enforces HTTP rules only under")
	fmt.Fprintln(d.out, "default deny: so the CNP with the HTTP rule puts web into egress default deny and allows everything")
	fmt.Fprintln(d.out, "but logging:8080, which only the HTTP rule allows (the rules after the first). The app keeps its traffic.")
	return nil
}

// shortenICMPs keeps the first ICMP field of a rule's list, for display,
// and returns how many it left out.
func shortenICMPs(icmps *api.ICMPRules) int {
	if len(*icmps) == 0 || len((*icmps)[0].Fields) == 0 {
		return 0
	}
	n := 0
	for _, r := range *icmps {
		n += len(r.Fields)
	}
	*icmps = api.ICMPRules{{Fields: (*icmps)[0].Fields[:1]}}
	return n - 1
}

// showStatus prints what `kubectl get ctrnp` prints, from the CRD's
// printer columns (mode, containers, pods, ready, age).
func (d *demo) showStatus(ctx context.Context) error {
	d.heading("3. kubectl get ctrnp -n shop")
	ps, err := d.listPolicies(ctx)
	if err != nil {
		return err
	}
	w := tabwriter.NewWriter(d.out, 0, 0, 3, ' ', 0)
	fmt.Fprintln(w, "NAME\tMODE\tCONTAINERS\tPODS\tREADY\tAGE")
	for _, p := range ps {
		ready := "Unknown"
		if c := meta.FindStatusCondition(p.Status.Conditions, v1alpha1.ConditionReady); c != nil {
			ready = string(c.Status)
		}
		age := duration.HumanDuration(time.Since(p.CreationTimestamp.Time))
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\n", p.Name, p.Spec.Mode, p.Status.ContainerSummary, p.Status.SelectedPods, ready, age)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(d.out)
	for _, p := range ps {
		for _, c := range p.Status.Conditions {
			fmt.Fprintf(d.out, "  %s %s=%s (%s) %s\n", p.Name, c.Type, c.Status, c.Reason, c.Message)
		}
	}
	return nil
}

// waitEnforced waits until the agent has applied the policies to the web
// pod: both containers classified with their restricted directions, the
// pod cgroup attached, and the peers' addresses known. Only then is a
// connection's result the policy's, not a race with the agent.
func (d *demo) waitEnforced(ctx context.Context) error {
	web := d.pods["web"]
	shipper, err := web.Container("log-shipper")
	if err != nil {
		return err
	}
	app, err := web.Container("app")
	if err != nil {
		return err
	}
	webCg, err := cgroupID(web.CgroupDir)
	if err != nil {
		return err
	}
	return poll(ctx, "agent enforcing the policies on shop/web", func() (bool, error) {
		st := d.agent.State()
		if st == nil {
			return false, nil
		}
		if c, ok := st.Containers[shipper.CgroupID]; !ok || !c.EgressRestricted {
			return false, nil
		}
		if c, ok := st.Containers[app.CgroupID]; !ok || !c.IngressRestricted {
			return false, nil
		}
		if _, ok := st.Attach[webCg]; !ok {
			return false, nil
		}
		for _, peer := range []string{"logging", "payments"} {
			if _, ok := st.Identities[netip.PrefixFrom(d.pods[peer].IP, 32)]; !ok {
				return false, nil
			}
		}
		return true, nil
	})
}

func cgroupID(dir string) (uint64, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(dir, &st); err != nil {
		return 0, fmt.Errorf("stat cgroup %s: %w", dir, err)
	}
	return st.Ino, nil
}

// check is one expected-versus-actual result the demo's exit status
// depends on.
type check struct {
	name     string
	expected string
	actual   string
	ok       bool
}

type connection struct {
	pod, container string
	method         string
	peer           string // pod whose IP is the target; "" for loopback
	port           int
	path           string
	allow          bool
	why            string
	// cilium is what Cilium's own Hubble must show for it on the Cilium
	// node, and ciliumWhy why.
	cilium, ciliumWhy string
}

func (c connection) target(d *demo) string {
	host := "127.0.0.1"
	if c.peer != "" {
		host = d.pods[c.peer].IP.String()
	}
	return fmt.Sprintf("http://%s:%d%s", host, c.port, c.path)
}

func (c connection) label() (from, to string) {
	to = fmt.Sprintf("%s:%d", c.peer, c.port)
	if c.peer == "" {
		to = fmt.Sprintf("localhost:%d (loopback)", c.port)
	}
	return c.pod + "/" + c.container, fmt.Sprintf("%s %s %s", c.method, to, c.path)
}

// matrix is the scenario's connections. The expectations come from the
// policy's meaning, stated in each why.
var matrix = []connection{
	{"web", "app", "GET", "payments", 8080, "/charge", true, "no policy restricts the app's egress",
		ciliumForwarded, "the generated CNP has no default deny, so Cilium allows the pod's other egress"},
	{"web", "log-shipper", "POST", "payments", 8080, "/charge", false, "log-shipper may only reach logging:8080",
		ciliumNoFlow, "refused at connect() inside the pod: no packet reached Cilium"},
	{"web", "log-shipper", "POST", "logging", 8080, "/ingest", true, "the one destination log-shipper may reach",
		ciliumForwarded, "the generated CNP allows web -> logging:8080"},
	{"web", "log-shipper", "GET", "", 9090, "/admin", false, "the admin port accepts only the app",
		ciliumLoopback, "loopback inside the pod: Cilium's datapath never sees it"},
	{"web", "app", "GET", "", 9090, "/admin", true, "the app may reach its own admin port",
		ciliumLoopback, "loopback inside the pod: Cilium's datapath never sees it"},
	{"payments", "payments", "GET", "web", 8080, "/", true, "the app's public port is open to all",
		ciliumForwarded, "the generated CNP allows all to web:8080"},
	{"payments", "payments", "GET", "web", 9090, "/admin", false, "the admin port accepts only the app",
		ciliumForwarded, "Cilium delivers it to the web pod (its identity may reach the pod); sidewall drops it at the app's cgroup"},
}

func (d *demo) trafficMatrix(ctx context.Context) error {
	d.heading("4. Real connections, made by processes in each container's cgroup (sidewall's BPF datapath decides)")
	type row struct {
		expected, actual string
		ok               bool
	}
	rows := make([]row, len(matrix))
	windows := make([]rowWindow, len(matrix))
	for i, c := range matrix {
		windows[i].from = time.Now()
		status, body, err := d.node.HTTP(ctx, d.pods[c.pod], c.container, c.method, c.target(d), requestTimeout)
		windows[i].to = time.Now()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		var connErr *localnode.ConnError
		if err != nil && !errors.As(err, &connErr) {
			// The client did not run: nothing was measured.
			return fmt.Errorf("connection %s/%s -> %s: %w", c.pod, c.container, c.target(d), err)
		}
		allowed, actual := outcome(status, body, connErr)
		rows[i] = row{expected: "denied", actual: actual, ok: allowed != nil && *allowed == c.allow}
		if c.allow {
			rows[i].expected = "allowed"
		}
		// The connection's last packets must not fall into the next row's
		// window of Cilium's flows.
		time.Sleep(100 * time.Millisecond)
	}
	var verdicts []string
	if d.cilium {
		var err error
		if verdicts, err = d.ciliumVerdicts(ctx, windows); err != nil {
			return fmt.Errorf("Cilium's verdicts from its Hubble: %w", err)
		}
	}
	w := tabwriter.NewWriter(d.out, 0, 0, 2, ' ', 0)
	if d.cilium {
		fmt.Fprintln(w, "FROM\tTO\tEXPECTED\tACTUAL (sidewall)\tCILIUM (its Hubble)\tRESULT")
	} else {
		fmt.Fprintln(w, "FROM\tTO\tEXPECTED\tACTUAL\tRESULT")
	}
	for i, c := range matrix {
		from, to := c.label()
		r := rows[i]
		ch := check{name: from + " → " + to, expected: r.expected, actual: r.actual, ok: r.ok}
		ciliumCol := ""
		if d.cilium {
			ciliumCol = verdicts[i] + "\t"
			if verdicts[i] != c.cilium {
				ch.ok = false
				ch.expected += ", Cilium " + c.cilium
				ch.actual += ", Cilium " + verdicts[i]
			}
		}
		d.checks = append(d.checks, ch)
		result := "ok"
		if !ch.ok {
			result = "MISMATCH"
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s%s\n", from, to, r.expected, r.actual, ciliumCol, result)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(d.out, "\nWhy:")
	for _, c := range matrix {
		from, to := c.label()
		fmt.Fprintf(d.out, "  %s → %s: %s\n", from, to, c.why)
		if d.cilium {
			fmt.Fprintf(d.out, "      Cilium %s: %s\n", c.cilium, c.ciliumWhy)
		}
	}
	fmt.Fprintln(d.out, "\nThe app and log-shipper share one network namespace, one IP and one Cilium identity:")
	fmt.Fprintln(d.out, "no pod-level policy can tell these rows apart.")
	return nil
}

// outcome classifies what the process got. Only a policy's answers count
// as denied: EPERM (refused at connect by the datapath) or a timeout (the
// packet dropped); anything else, such as "connection refused", means the
// packet went through and is reported as unexpected (allowed is nil).
func outcome(status int, body string, err *localnode.ConnError) (allowed *bool, actual string) {
	yes, no := true, false
	switch {
	case err == nil && status == 200:
		return &yes, fmt.Sprintf("allowed (HTTP %d)", status)
	case err == nil:
		return nil, fmt.Sprintf("HTTP %d %q", status, body)
	case errors.Is(err, syscall.EPERM):
		return &no, fmt.Sprintf("denied: %s: %s (%s)", err.Op, syscall.EPERM.Error(), errnoName(syscall.EPERM))
	case errors.Is(err, localnode.ErrTimeout):
		return &no, fmt.Sprintf("denied: dropped (%s timed out after %s)", err.Op, requestTimeout)
	}
	return nil, "error: " + err.Error()
}

// jqFlow prints one line per flow with the container that sent it and the
// policy that denied it.
const jqFlow = `.flow | "\(.time[11:23]) \(.source.namespace)/\(.source.pod_name) [\(.source.labels[] | select(startswith("k8s:sidewall.io/container=")) | ltrimstr("k8s:"))] -> \(.destination.namespace)/\(.destination.pod_name):\(.l4.TCP.destination_port) \(.verdict) \(.drop_reason_desc) by \((.egress_denied_by // .ingress_denied_by // []) | map(.kind + " " + .name) | join(", "))"`

// showHubble runs the stock hubble CLI against the agent's Hubble API,
// as a user would.
func (d *demo) showHubble(ctx context.Context) error {
	d.heading("5. hubble observe (the stock Hubble CLI, against sidewall-agent's Hubble API, then Cilium's)")
	all := []string{"observe", "--server", d.hubbleAt, "--last", "100", "--verdict", "DROPPED"}
	shipper := append(append([]string{}, all...), "--from-label", "sidewall.io/container=log-shipper")
	shipperJSON := append(append([]string{}, shipper...), "-o", "jsonpb")
	app := append(append([]string{}, all...), "--from-label", "sidewall.io/container=app")

	// Flows reach the API through the datapath's ring buffer a moment
	// after the verdict: wait for the denied ones the matrix caused.
	var out string
	payments := d.pods["payments"].IP.String()
	err := poll(ctx, "hubble showing the denied flows", func() (bool, error) {
		var err error
		out, err = d.runHubble(ctx, all...)
		if err != nil {
			return false, err
		}
		// One per denied row of the matrix; the compact form names pods.
		return strings.Contains(out, "-> shop/payments:8080") && strings.Count(out, "DROPPED") >= 3, nil
	})
	fmt.Fprintf(d.out, "$ hubble %s\n%s\n", strings.Join(all, " "), out)
	if err != nil && ctx.Err() != nil {
		return err
	}

	out, err = d.runHubble(ctx, shipper...)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "$ hubble %s\n%s\n", strings.Join(shipper, " "), orNone(out))
	raw, err := d.runHubble(ctx, shipperJSON...)
	if err != nil {
		return err
	}
	// The compact output names pods; the container is in the flow's
	// labels and extensions, which jq picks out of the JSON form.
	outShipper, shown, err := viaJQ(ctx, jqFlow, raw)
	if err != nil {
		return err
	}
	if shown == "" {
		outShipper, shown = raw, "-o jsonpb"
	}
	fmt.Fprintf(d.out, "$ hubble %s %s\n%s\n", strings.Join(shipper, " "), shown, orNone(outShipper))
	outApp, err := d.runHubble(ctx, app...)
	if err != nil {
		return err
	}
	fmt.Fprintf(d.out, "$ hubble %s\n%s\n\n", strings.Join(app, " "), orNone(outApp))
	if d.cilium {
		if err := d.showCiliumFlowsNamed(ctx); err != nil {
			return err
		}
	}
	if err := d.showCiliumHubble(ctx); err != nil {
		return err
	}

	// raw is the CLI's own JSON, whatever jq made of it.
	shows := strings.Contains(raw, `"DROPPED"`) && strings.Contains(raw, payments) && strings.Contains(raw, "k8s:sidewall.io/container=log-shipper")
	d.addCheck("hubble --from-label sidewall.io/container=log-shipper shows its drop to payments", "shown", shows, "shown", "not shown")
	d.addCheck("hubble --from-label sidewall.io/container=app shows no drops", "none", !strings.Contains(outApp, "DROPPED"), "none", "drops shown")
	return nil
}

// showCiliumFlowsNamed shows Cilium's own flows (its traces of what it
// forwarded), which sidewall-agent re-serves with the container named.
func (d *demo) showCiliumFlowsNamed(ctx context.Context) error {
	args := []string{"observe", "--server", d.hubbleAt, "--last", "5", "--type", "trace", "--from-label", "sidewall.io/container=log-shipper"}
	var out string
	err := poll(ctx, "Cilium's flows of log-shipper through sidewall's Hubble", func() (bool, error) {
		var err error
		out, err = d.runHubble(ctx, args...)
		return err == nil && strings.Contains(out, "container from log-shipper"), err
	})
	if err != nil && ctx.Err() != nil {
		return err
	}
	fmt.Fprintln(d.out, "Cilium's own flows, re-served by sidewall-agent with the container named (its traces of what it forwarded):")
	fmt.Fprintf(d.out, "$ hubble %s\n%s\n", strings.Join(args, " "), orNone(out))
	d.addCheck("Cilium's own flows of log-shipper name the container", "named", strings.Contains(out, "container from log-shipper"), "named", "not named")
	fmt.Fprintln(d.out)
	return nil
}

// viaJQ runs the hubble CLI's JSON output raw through jq's filter, if jq
// is installed, and returns what it printed and how to show the command
// ("-o jsonpb | jq -r '…'"); without jq both are "".
func viaJQ(ctx context.Context, filter, raw string) (out, shown string, err error) {
	jq, err := exec.LookPath("jq")
	if err != nil {
		return "", "", nil
	}
	cmd := exec.CommandContext(ctx, jq, "-r", filter)
	cmd.Stdin = strings.NewReader(raw)
	b, err := cmd.CombinedOutput()
	if err != nil {
		return "", "", fmt.Errorf("jq: %w: %s", err, b)
	}
	return string(b), "-o jsonpb | jq -r '" + filter + "'", nil
}

func (d *demo) addCheck(name, expected string, ok bool, good, bad string) {
	actual := good
	if !ok {
		actual = bad
	}
	d.checks = append(d.checks, check{name: name, expected: expected, actual: actual, ok: ok})
	result := "ok"
	if !ok {
		result = "MISMATCH"
	}
	fmt.Fprintf(d.out, "check: %s: %s\n", name, result)
}

func orNone(s string) string {
	if strings.TrimSpace(s) == "" {
		return "(no flows)"
	}
	return s
}

func (d *demo) runHubble(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, d.hubble, args...)
	// The user's hubble config (a default server, say) must not change
	// what the demo shows.
	cmd.Env = append(os.Environ(), "HUBBLE_CONFIG=/dev/null")
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("hubble %s: %w: %s", strings.Join(args, " "), err, out)
	}
	return string(out), nil
}

func (d *demo) showLimits() {
	d.heading("7. What this local demo does not show")
	if d.cilium {
		fmt.Fprintln(d.out, `- The HTTP rule (log-shipper: only POST /ingest to logging:8080) is Envoy's to enforce. Cilium runs
  here with its L7 proxy on and imported the rule (it configured an Envoy listener for it), but no
  Envoy runs on this machine (cilium-envoy is C++ and cannot be built here). With no Envoy to take
  the listener, Cilium forwards the request at L3/L4: its Hubble shows it FORWARDED to the endpoint,
  not to the proxy. In a cluster, a GET /admin from log-shipper to logging:8080 gets "403 Access
  denied" from Envoy; sidewall's tests check the HTTP rules with Cilium's own policy engine instead.
- Cilium's own Hubble names the pod, not the container; sidewall's Hubble (section 5) re-serves
  Cilium's flows with the container named (see docs/operations.md, "Cilium's flows, with the container").
- With no Envoy, Cilium's regeneration of the web pod (its HTTP rule) waits up to 330 s for an Envoy
  acknowledgement, and the orders pod's regeneration was seen to wait behind it. So fqdn-policy.yaml
  is applied first (section 1), and the demo waits until Cilium's DNS proxy is in the orders pod's
  path. In a cluster the order does not matter.`)
		return
	}
	fmt.Fprintln(d.out, `- No Cilium runs in this mode (--cilium=false): peer identities come from pod labels (the agent's
  local identity source), and the pods are wired by sidewall's harness, not by cilium-cni.
- The HTTP rule (log-shipper: only POST /ingest to logging:8080) is enforced by Cilium's Envoy
  in a real cluster: there a GET /admin from log-shipper to logging:8080 gets "403 Access denied".
  The demo shows the generated CiliumNetworkPolicy (section 2) instead of an Envoy 403;
  sidewall's datapath enforces the L3/L4 part per container (section 4).`)
}

// findHubble returns the hubble CLI: the flag, else bin/hubble of the
// repository holding the working directory, else $PATH.
func findHubble(flagValue string) (string, error) {
	if flagValue != "" {
		return flagValue, nil
	}
	if p, err := harness.Tool("hubble"); err == nil {
		return p, nil
	}
	if p, err := exec.LookPath("hubble"); err == nil {
		return p, nil
	}
	return "", errors.New("hubble CLI not found: run `make tools` (it builds bin/hubble) or pass --hubble")
}
