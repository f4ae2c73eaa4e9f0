package localnode

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/util/retry"

	"github.com/sidewall/sidewall/agent/cgroups"
)

// defaultImage fills empty container images: the API server requires one
// and nothing here pulls it.
const defaultImage = "sidewall.invalid/localnode:none"

// Pod is a pod running on the local node. Its exported fields do not change
// after RunPod returns.
type Pod struct {
	Namespace string
	Name      string
	UID       types.UID
	QOSClass  corev1.PodQOSClass
	IP        netip.Addr
	// NetNSName is the pod's network namespace as `ip netns` names it
	// (bind-mounted at NetNSPath), so `ip netns exec <name> ...` works.
	// Both are empty for a pod run WithoutNetwork.
	NetNSName string
	NetNSPath string
	// CgroupDir is the pod cgroup, absolute.
	CgroupDir string
	// SandboxCgroupDir is the pod sandbox's (pause container's) cgroup,
	// which containerd creates in the pod cgroup next to the containers'
	// and which no status names. No process runs in it.
	SandboxCgroupDir string

	node        *Node
	hostVeth    string
	ciliumWired bool // cilium-cni ADD succeeded; DEL is owed
	started     metav1.Time
	containers  []*container // guarded by node.mu
	gone        bool         // guarded by node.mu
}

// sandboxID is the pod sandbox's id, as the runtime hands it to the CNI
// plugin (CNI_CONTAINERID).
func (p *Pod) sandboxID() string { return filepath.Base(p.SandboxCgroupDir) }

type container struct {
	name      string
	role      cgroups.Role
	image     string
	id        string // without the "containerd://" scheme
	dir       string // empty once a regular init container completed
	restarts  int32
	startedAt metav1.Time
	lastState corev1.ContainerState
	completed *corev1.ContainerStateTerminated
	procs     map[*Process]struct{}
}

// Container is a snapshot of one container of a Pod.
type Container struct {
	Name string
	Role cgroups.Role
	// ContainerID is the status form, "containerd://<64 hex>".
	ContainerID string
	// CgroupDir is empty for a completed init container: the runtime
	// removed its cgroup.
	CgroupDir    string
	CgroupID     uint64
	RestartCount int32
	Running      bool
}

func (c *container) snapshot() Container {
	out := Container{
		Name: c.name, Role: c.role, ContainerID: "containerd://" + c.id,
		CgroupDir: c.dir, RestartCount: c.restarts, Running: c.completed == nil,
	}
	if c.dir != "" {
		var st unix.Stat_t
		if unix.Stat(c.dir, &st) == nil {
			out.CgroupID = st.Ino
		}
	}
	return out
}

// Container returns the current state of the named container.
func (p *Pod) Container(name string) (Container, error) {
	p.node.mu.Lock()
	defer p.node.mu.Unlock()
	c, err := p.find(name)
	if err != nil {
		return Container{}, err
	}
	return c.snapshot(), nil
}

// Containers returns every container: init containers and sidecars in spec
// order, then app containers, then ephemeral containers.
func (p *Pod) Containers() []Container {
	p.node.mu.Lock()
	defer p.node.mu.Unlock()
	out := make([]Container, 0, len(p.containers))
	for _, c := range p.containers {
		out = append(out, c.snapshot())
	}
	return out
}

func (p *Pod) find(name string) (*container, error) {
	for _, c := range p.containers {
		if c.name == name {
			return c, nil
		}
	}
	return nil, fmt.Errorf("pod %s/%s has no container %q", p.Namespace, p.Name, name)
}

// PodOption changes how RunPod or RestartContainer plays a container start.
type PodOption func(*podOptions)

type podOptions struct {
	beforeStatus func(*Pod) error
	noNetwork    bool
}

// WithoutNetwork makes RunPod skip the network namespace and veth: the pod
// still gets an address in its status, but no interface has it and no
// process can run in it. It is for scale tests (a bridge takes at most 1024
// ports, and a namespace costs time) where only the API objects and the
// cgroups matter.
func WithoutNetwork() PodOption {
	return func(o *podOptions) { o.noNetwork = true }
}

// BeforeStatus runs fn once the containers' cgroups exist and before kubelet
// would report them (the Running status, or the status after a restart). A
// process fn starts with RunInContainer runs in a container the API server
// does not know yet: what a node agent faces between the runtime starting a
// container and kubelet's status update. An error from fn fails the call.
func BeforeStatus(fn func(*Pod) error) PodOption {
	return func(o *podOptions) { o.beforeStatus = fn }
}

func applyOptions(opts []PodOption) podOptions {
	var o podOptions
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// RunPod creates the pod on the API server bound to this node and plays its
// start as kubelet and containerd would: pod cgroup, network namespace,
// container cgroups (a regular init container's cgroup is created and
// removed again, as it completes at once), then the pod status, written
// twice as kubelet does: Pending with the pod IP once the sandbox is up, then
// Running with every container's id. No process runs in the containers until
// RunInContainer, Listen, Dial or HTTP starts one.
//
// The pod is deleted again if any step fails.
func (n *Node) RunPod(ctx context.Context, in *corev1.Pod, opts ...PodOption) (_ *Pod, err error) {
	o := applyOptions(opts)
	if err := validatePod(in); err != nil {
		return nil, fmt.Errorf("run pod: %w", err)
	}
	obj := in.DeepCopy()
	obj.ResourceVersion, obj.UID, obj.Status = "", "", corev1.PodStatus{}
	obj.Spec.NodeName = n.name
	for _, cs := range [][]corev1.Container{obj.Spec.InitContainers, obj.Spec.Containers} {
		for i := range cs {
			if cs[i].Image == "" {
				cs[i].Image = defaultImage
			}
		}
	}
	if err := n.ensureNamespace(ctx, obj.Namespace); err != nil {
		return nil, fmt.Errorf("run pod %s/%s: %w", obj.Namespace, obj.Name, err)
	}
	created, err := n.client.CoreV1().Pods(obj.Namespace).Create(ctx, obj, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("run pod %s/%s: create: %w", obj.Namespace, obj.Name, err)
	}
	p := &Pod{
		Namespace: created.Namespace, Name: created.Name, UID: created.UID,
		QOSClass: created.Status.QOSClass, node: n, started: metav1.Now(),
	}
	n.mu.Lock()
	n.pods[p.UID] = p
	closing := n.closing
	n.mu.Unlock()
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("run pod %s/%s: %w", p.Namespace, p.Name, err), n.DeletePod(context.WithoutCancel(ctx), p))
		}
	}()
	if closing {
		return nil, errors.New("node is closed")
	}

	// kubelet's pod cgroup path for the cgroupfs driver, written out here
	// rather than taken from agent/cgroups, which the agent tests check.
	switch p.QOSClass {
	case corev1.PodQOSGuaranteed:
		p.CgroupDir = filepath.Join(n.kubepods, "pod"+string(p.UID))
	case corev1.PodQOSBurstable:
		p.CgroupDir = filepath.Join(n.kubepods, "burstable", "pod"+string(p.UID))
	case corev1.PodQOSBestEffort:
		p.CgroupDir = filepath.Join(n.kubepods, "besteffort", "pod"+string(p.UID))
	default:
		return nil, fmt.Errorf("api server set no status.qosClass (got %q)", p.QOSClass)
	}
	if err := os.Mkdir(p.CgroupDir, 0o755); err != nil {
		return nil, fmt.Errorf("create pod cgroup: %w", err)
	}
	p.SandboxCgroupDir = filepath.Join(p.CgroupDir, randHex(32))
	if err := os.Mkdir(p.SandboxCgroupDir, 0o755); err != nil {
		return nil, fmt.Errorf("create sandbox cgroup: %w", err)
	}
	if o.noNetwork {
		if p.IP, err = n.allocIP(); err != nil {
			return nil, err
		}
	} else if n.cilium != nil {
		if err := n.cilium.addPod(n, p); err != nil {
			return nil, err
		}
	} else if err := n.setupPodNetwork(p); err != nil {
		return nil, err
	}
	for _, c := range created.Spec.InitContainers {
		role := cgroups.RoleInit
		if c.RestartPolicy != nil && *c.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			role = cgroups.RoleSidecar
		}
		p.containers = append(p.containers, &container{name: c.Name, role: role, image: c.Image})
	}
	for _, c := range created.Spec.Containers {
		p.containers = append(p.containers, &container{name: c.Name, role: cgroups.RoleApp, image: c.Image})
	}
	if err := n.writeStatus(ctx, p, corev1.PodPending); err != nil {
		return nil, err
	}
	for _, c := range p.containers {
		if err := n.startContainer(p, c); err != nil {
			return nil, err
		}
	}
	if o.beforeStatus != nil {
		if err := o.beforeStatus(p); err != nil {
			return nil, fmt.Errorf("before status: %w", err)
		}
	}
	if err := n.writeStatus(ctx, p, corev1.PodRunning); err != nil {
		return nil, err
	}
	n.logf("pod %s/%s: running on %s, ip %s, cgroup %s", p.Namespace, p.Name, n.name, p.IP, p.CgroupDir)
	return p, nil
}

func validatePod(p *corev1.Pod) error {
	if p == nil {
		return errors.New("pod: nil")
	}
	if p.Namespace == "" {
		return errors.New("pod metadata.namespace: required")
	}
	if errs := validation.IsDNS1123Subdomain(p.Name); len(errs) > 0 {
		return fmt.Errorf("pod metadata.name %q: %v", p.Name, errs)
	}
	if len(p.Spec.Containers) == 0 {
		return errors.New("pod spec.containers: at least one required")
	}
	if len(p.Spec.EphemeralContainers) > 0 {
		return errors.New("pod spec.ephemeralContainers: add them with AddEphemeralContainer once the pod runs")
	}
	return nil
}

func (n *Node) ensureNamespace(ctx context.Context, ns string) error {
	n.mu.Lock()
	known := n.ns[ns]
	n.mu.Unlock()
	if known {
		return nil
	}
	_, err := n.client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	// The ServiceAccount admission plugin refuses pods whose service
	// account does not exist, and envtest runs no controller to create it.
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "default"}}
	_, err = n.client.CoreV1().ServiceAccounts(ns).Create(ctx, sa, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create service account %s/default: %w", ns, err)
	}
	n.mu.Lock()
	n.ns[ns] = true
	n.mu.Unlock()
	return nil
}

// startContainer does the runtime's part: a new id and cgroup. A regular
// init container runs to completion at once, so its cgroup goes again.
func (n *Node) startContainer(p *Pod, c *container) error {
	id := randHex(32)
	dir := filepath.Join(p.CgroupDir, id) // containerd, cgroupfs driver: the bare id
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("create cgroup of container %s: %w", c.name, err)
	}
	now := metav1.Now()
	n.mu.Lock()
	c.id, c.dir, c.startedAt = id, dir, now
	if c.procs == nil {
		c.procs = map[*Process]struct{}{}
	}
	n.mu.Unlock()
	if c.role != cgroups.RoleInit {
		return nil
	}
	if err := rmdirCgroup(dir); err != nil {
		return fmt.Errorf("complete init container %s: %w", c.name, err)
	}
	n.mu.Lock()
	c.dir = ""
	c.completed = &corev1.ContainerStateTerminated{
		ExitCode: 0, Reason: "Completed", StartedAt: now, FinishedAt: metav1.Now(), ContainerID: "containerd://" + id,
	}
	n.mu.Unlock()
	return nil
}

// RestartContainer restarts a running container as the runtime does after
// it exits: its processes are killed, its cgroup removed, and it comes back
// with a new id and a new cgroup; the status then shows restartCount+1 and
// the old run as lastState. Processes are not started again.
func (n *Node) RestartContainer(ctx context.Context, p *Pod, name string, opts ...PodOption) (Container, error) {
	o := applyOptions(opts)
	n.mu.Lock()
	c, err := p.find(name)
	if err == nil && (p.gone || c.completed != nil) {
		err = fmt.Errorf("pod %s/%s container %s is not running", p.Namespace, p.Name, name)
	}
	if err != nil {
		n.mu.Unlock()
		return Container{}, fmt.Errorf("restart container: %w", err)
	}
	procs := c.procs
	c.procs = map[*Process]struct{}{}
	oldID, oldDir, oldStart := c.id, c.dir, c.startedAt
	n.mu.Unlock()

	var errs []error
	for pr := range procs {
		errs = append(errs, pr.Stop())
	}
	errs = append(errs, killCgroup(oldDir), rmdirCgroup(oldDir))
	if err := errors.Join(errs...); err != nil {
		return Container{}, fmt.Errorf("restart container %s: stop: %w", name, err)
	}
	n.mu.Lock()
	c.restarts++
	c.lastState = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode: 137, Reason: "Error", StartedAt: oldStart, FinishedAt: metav1.Now(), ContainerID: "containerd://" + oldID,
	}}
	n.mu.Unlock()
	if err := n.startContainer(p, c); err != nil {
		return Container{}, fmt.Errorf("restart container: %w", err)
	}
	if o.beforeStatus != nil {
		if err := o.beforeStatus(p); err != nil {
			return Container{}, fmt.Errorf("restart container: before status: %w", err)
		}
	}
	if err := n.writeStatus(ctx, p, corev1.PodRunning); err != nil {
		return Container{}, fmt.Errorf("restart container: %w", err)
	}
	return p.Container(name)
}

// AddEphemeralContainer adds an ephemeral container through the
// ephemeralcontainers subresource, as `kubectl debug` does, then starts it.
func (n *Node) AddEphemeralContainer(ctx context.Context, p *Pod, ec corev1.EphemeralContainer) (Container, error) {
	if ec.Image == "" {
		ec.Image = defaultImage
	}
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := n.client.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		cur.Spec.EphemeralContainers = append(cur.Spec.EphemeralContainers, ec)
		_, err = n.client.CoreV1().Pods(p.Namespace).UpdateEphemeralContainers(ctx, p.Name, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return Container{}, fmt.Errorf("add ephemeral container %s: %w", ec.Name, err)
	}
	c := &container{name: ec.Name, role: cgroups.RoleEphemeral, image: ec.Image}
	n.mu.Lock()
	p.containers = append(p.containers, c)
	n.mu.Unlock()
	if err := n.startContainer(p, c); err != nil {
		return Container{}, fmt.Errorf("add ephemeral container: %w", err)
	}
	if err := n.writeStatus(ctx, p, corev1.PodRunning); err != nil {
		return Container{}, fmt.Errorf("add ephemeral container: %w", err)
	}
	return p.Container(ec.Name)
}

// DeletePod deletes the pod as a user and then kubelet do: a graceful
// delete (deletionTimestamp set), the containers killed and their cgroups
// removed, the sandbox's network namespace and veth removed, and the final
// delete with grace period 0. It is idempotent.
func (n *Node) DeletePod(ctx context.Context, p *Pod) error {
	n.mu.Lock()
	if p.gone {
		n.mu.Unlock()
		return nil
	}
	p.gone = true
	var procs []*Process
	var dirs []string
	for _, c := range p.containers {
		for pr := range c.procs {
			procs = append(procs, pr)
		}
		if c.dir != "" {
			dirs = append(dirs, c.dir)
		}
	}
	n.mu.Unlock()

	var errs []error
	pods := n.client.CoreV1().Pods(p.Namespace)
	pre := metav1.NewUIDPreconditions(string(p.UID))
	if err := pods.Delete(ctx, p.Name, metav1.DeleteOptions{Preconditions: pre}); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete pod %s/%s: %w", p.Namespace, p.Name, err))
	}
	for _, pr := range procs {
		if err := pr.Stop(); err != nil {
			errs = append(errs, err)
		}
	}
	if p.CgroupDir != "" {
		// Also whatever a test moved into the pod's cgroups by itself.
		if err := killCgroup(p.CgroupDir); err != nil {
			errs = append(errs, err)
		}
	}
	for _, d := range dirs {
		errs = append(errs, rmdirCgroup(d))
	}
	if p.CgroupDir != "" {
		errs = append(errs, removeCgroupTree(p.CgroupDir))
	}
	errs = append(errs, n.teardownPodNetwork(p))
	zero := int64(0)
	if err := pods.Delete(ctx, p.Name, metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: pre}); err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		errs = append(errs, fmt.Errorf("delete pod %s/%s: %w", p.Namespace, p.Name, err))
	}
	n.mu.Lock()
	delete(n.pods, p.UID)
	n.mu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("delete pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	n.logf("pod %s/%s: deleted", p.Namespace, p.Name)
	return nil
}

// killCgroup kills every process in the cgroup subtree (cgroup.kill,
// Linux 5.14) and waits until it is empty.
func killCgroup(dir string) error {
	if dir == "" {
		return nil
	}
	if err := os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("kill cgroup %s: %w", dir, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
		if err != nil || slices.Contains(strings.Split(string(b), "\n"), "populated 0") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("kill cgroup %s: still populated after 5s", dir)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// writeStatus writes the pod status kubelet would report now.
func (n *Node) writeStatus(ctx context.Context, p *Pod, phase corev1.PodPhase) error {
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cur, err := n.client.CoreV1().Pods(p.Namespace).Get(ctx, p.Name, metav1.GetOptions{})
		if err != nil {
			return err
		}
		if cur.UID != p.UID {
			return fmt.Errorf("pod was replaced (uid %s, want %s)", cur.UID, p.UID)
		}
		cur.Status = n.buildStatus(p, cur, phase)
		_, err = n.client.CoreV1().Pods(p.Namespace).UpdateStatus(ctx, cur, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		return fmt.Errorf("write status of pod %s/%s: %w", p.Namespace, p.Name, err)
	}
	return nil
}

func (n *Node) buildStatus(p *Pod, cur *corev1.Pod, phase corev1.PodPhase) corev1.PodStatus {
	n.mu.Lock()
	defer n.mu.Unlock()
	running := phase == corev1.PodRunning
	cond := func(t corev1.PodConditionType, ok bool) corev1.PodCondition {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
		}
		return corev1.PodCondition{Type: t, Status: s, LastTransitionTime: metav1.Now()}
	}
	st := corev1.PodStatus{
		Phase:     phase,
		QOSClass:  cur.Status.QOSClass,
		HostIP:    n.hostIP.String(),
		HostIPs:   []corev1.HostIP{{IP: n.hostIP.String()}},
		PodIP:     p.IP.String(),
		PodIPs:    []corev1.PodIP{{IP: p.IP.String()}},
		StartTime: &p.started,
		Conditions: []corev1.PodCondition{
			cond(corev1.PodReadyToStartContainers, true),
			cond(corev1.PodInitialized, running),
			cond(corev1.PodReady, running),
			cond(corev1.ContainersReady, running),
			cond(corev1.PodScheduled, true),
		},
	}
	for _, c := range p.containers {
		cs := corev1.ContainerStatus{Name: c.name, Image: c.image, RestartCount: c.restarts, LastTerminationState: c.lastState}
		switch {
		case !running || c.id == "":
			reason := "ContainerCreating"
			if c.role == cgroups.RoleInit || c.role == cgroups.RoleSidecar {
				reason = "PodInitializing"
			}
			cs.State.Waiting = &corev1.ContainerStateWaiting{Reason: reason}
			cs.Started = new(false)
		case c.completed != nil:
			cs.ContainerID = c.completed.ContainerID
			cs.State.Terminated = c.completed.DeepCopy()
			cs.Ready = true
			cs.Started = new(false)
		default:
			cs.ContainerID = "containerd://" + c.id
			cs.State.Running = &corev1.ContainerStateRunning{StartedAt: c.startedAt}
			cs.Ready = c.role != cgroups.RoleEphemeral
			cs.Started = new(true)
		}
		cs.ImageID = cs.Image
		switch c.role {
		case cgroups.RoleInit, cgroups.RoleSidecar:
			st.InitContainerStatuses = append(st.InitContainerStatuses, cs)
		case cgroups.RoleEphemeral:
			cs.Ready = false
			st.EphemeralContainerStatuses = append(st.EphemeralContainerStatuses, cs)
		default:
			st.ContainerStatuses = append(st.ContainerStatuses, cs)
		}
	}
	return st
}

// bringUpLoopback sets the lo of the network namespace ns up.
func bringUpLoopback(ns netns.NsHandle) error {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return err
	}
	return h.LinkSetUp(lo)
}

// setupPodNetwork plays the CNI plugin: a named network namespace, a veth
// whose pod end is eth0 with the pod's address, the host end on the bridge.
// The pod gets no default route: it reaches only the bridge's range.
func (n *Node) setupPodNetwork(p *Pod) error {
	ip, err := n.allocIP()
	if err != nil {
		return err
	}
	p.IP = ip
	p.NetNSName = fmt.Sprintf("swln-%s-%s-%s", n.id, p.Namespace, p.Name)
	if len(p.NetNSName) > 200 { // a file name; namespace and pod names can be long
		p.NetNSName = fmt.Sprintf("swln-%s-%s", n.id, p.UID)
	}
	p.NetNSPath = filepath.Join("/run/netns", p.NetNSName)
	ns, err := newNamedNetns(p.NetNSName)
	if err != nil {
		p.NetNSName, p.NetNSPath = "", ""
		return fmt.Errorf("create network namespace: %w", err)
	}
	defer ns.Close()

	br, err := netlink.LinkByName(n.bridge)
	if err != nil {
		return fmt.Errorf("find bridge %s: %w", n.bridge, err)
	}
	p.hostVeth = n.vethName()
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: p.hostVeth},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		p.hostVeth = ""
		return fmt.Errorf("create veth %s: %w", veth.Name, err)
	}
	host, err := netlink.LinkByName(p.hostVeth)
	if err != nil {
		return fmt.Errorf("find veth %s: %w", p.hostVeth, err)
	}
	disableIPv6(p.hostVeth)
	if err := netlink.LinkSetMaster(host, br); err != nil {
		return fmt.Errorf("attach veth %s to %s: %w", p.hostVeth, n.bridge, err)
	}
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("bring up veth %s: %w", p.hostVeth, err)
	}

	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in %s: %w", p.NetNSName, err)
	}
	defer h.Close()
	if err := bringUpLoopback(ns); err != nil {
		return fmt.Errorf("bring up lo in %s: %w", p.NetNSName, err)
	}
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return fmt.Errorf("find eth0 in %s: %w", p.NetNSName, err)
	}
	if err := h.AddrAdd(eth0, &netlink.Addr{IPNet: ipNet(ip, n.subnet.Bits())}); err != nil {
		return fmt.Errorf("address eth0 in %s: %w", p.NetNSName, err)
	}
	if err := h.LinkSetUp(eth0); err != nil {
		return fmt.Errorf("bring up eth0 in %s: %w", p.NetNSName, err)
	}
	return nil
}

func (n *Node) teardownPodNetwork(p *Pod) error {
	var errs []error
	if n.cilium != nil {
		if err := n.cilium.delPod(p); err != nil {
			errs = append(errs, err)
		}
	}
	if p.hostVeth != "" {
		if l, err := netlink.LinkByName(p.hostVeth); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				errs = append(errs, fmt.Errorf("delete veth %s: %w", p.hostVeth, err))
			}
		}
	}
	if p.NetNSName != "" {
		if err := deleteNamedNetns(p.NetNSName); err != nil {
			errs = append(errs, fmt.Errorf("delete network namespace %s: %w", p.NetNSName, err))
		}
	}
	return errors.Join(errs...)
}

// deleteNamedNetns removes a network namespace made by newNamedNetns, as
// `ip netns delete` does: it detaches the bind mount and removes its file.
// The removal fails with EBUSY while the file is still a mount point here:
// /run/netns is a shared mount, and a copy of the bind mount can come back
// stacked on it by propagation from the mount namespaces that runc and
// containerd make (in tests running beside this one). So it detaches and
// removes again, for a while.
func deleteNamedNetns(name string) error {
	path := filepath.Join("/run/netns", name)
	deadline := time.Now().Add(20 * time.Second)
	for {
		if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			return err
		}
		err := os.Remove(path)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// newNamedNetns creates a network namespace bind-mounted under /run/netns
// like `ip netns add`. Creating one moves the calling thread into it, so it
// runs on a locked thread that moves back; a thread that cannot move back
// stays locked and the runtime retires it.
func newNamedNetns(name string) (netns.NsHandle, error) {
	type result struct {
		h   netns.NsHandle
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{netns.None(), fmt.Errorf("get current network namespace: %w", err)}
			return
		}
		defer orig.Close()
		h, err := netns.NewNamed(name)
		if err == nil {
			// New interfaces in this namespace (eth0) get no IPv6: no
			// router solicitations or MLD reports on the bridge.
			_ = os.WriteFile("/proc/sys/net/ipv6/conf/default/disable_ipv6", []byte("1"), 0o644)
		}
		if serr := netns.Set(orig); serr != nil {
			ch <- result{h, errors.Join(err, fmt.Errorf("return to host network namespace: %w", serr))}
			return
		}
		runtime.UnlockOSThread()
		ch <- result{h, err}
	}()
	r := <-ch
	if r.err != nil && r.h.IsOpen() {
		r.h.Close()
		_ = netns.DeleteNamed(name)
	}
	return r.h, r.err
}
