// Package containerd runs a real containerd (Debian's, with its CRI plugin
// and runc) for the tests, with its own root, state and socket, a CNI
// bridge from Debian's containernetworking-plugins, and a test image built
// here from a static Go binary (./firstconn) as an OCI archive and imported
// with ctr. The harness then drives the CRI as kubelet does: RunPodSandbox
// with the pod's cgroup parent, CreateContainer with kubelet's labels,
// StartContainer.
package containerd

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	corev1 "k8s.io/api/core/v1"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/sidewall/sidewall/agent/cri"
)

// Image is the test image's name; its entrypoint is /firstconn.
const Image = "sidewall.test/firstconn:1"

// Runtime is a running containerd.
type Runtime struct {
	dir     string
	cmd     *exec.Cmd
	conn    *grpc.ClientConn
	RT      runtimeapi.RuntimeServiceClient
	Gateway netip.Addr // the CNI bridge's address in the host namespace
	Bridge  string
}

// Start builds the image, starts containerd in dir and imports the image.
func Start(ctx context.Context, dir string) (*Runtime, error) {
	for _, bin := range []string{"containerd", "containerd-shim-runc-v2", "runc", "ctr"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Errorf("%s not found (Debian packages containerd and runc): %w", bin, err)
		}
	}
	if _, err := os.Stat("/usr/lib/cni/bridge"); err != nil {
		return nil, fmt.Errorf("CNI bridge plugin not found (Debian package containernetworking-plugins): %w", err)
	}
	suffix := randHex(3)
	r := &Runtime{dir: dir, Bridge: "swcri" + suffix}
	// A /24 of 10.250.0.0/16 that no interface here uses.
	b := []byte{0}
	rand.Read(b)
	subnet := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 250, b[0], 0}), 24)
	r.Gateway = netip.AddrFrom4([4]byte{10, 250, b[0], 1})
	for _, d := range []string{"root", "state", "cni", "ipam", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return nil, err
		}
	}
	conflist := fmt.Sprintf(`{"cniVersion": "1.0.0", "name": "sidewall-cri", "plugins": [
  {"type": "bridge", "bridge": %q, "isGateway": true, "ipMasq": false,
   "ipam": {"type": "host-local", "ranges": [[{"subnet": %q, "gateway": %q}]], "dataDir": %q}}]}`,
		r.Bridge, subnet, r.Gateway, filepath.Join(dir, "ipam"))
	if err := os.WriteFile(filepath.Join(dir, "cni", "10-sidewall.conflist"), []byte(conflist), 0o600); err != nil {
		return nil, err
	}
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %q
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  # The sandbox's oom_score_adj (-998) is above what this sandbox may set.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), r.Socket(), r.Socket()+".ttrpc",
		Image, filepath.Join(dir, "cni"))
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o600); err != nil {
		return nil, err
	}
	// The bridge and its gateway address exist before the first pod, so a
	// test can listen on the gateway; the bridge plugin adopts them.
	for _, args := range [][]string{
		{"link", "add", "name", r.Bridge, "type", "bridge"},
		{"addr", "add", netip.PrefixFrom(r.Gateway, 24).String(), "dev", r.Bridge},
		{"link", "set", r.Bridge, "up"},
	} {
		if out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput(); err != nil {
			exec.Command("ip", "link", "del", r.Bridge).Run()
			return nil, fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, out)
		}
	}
	archive := filepath.Join(dir, "image.tar")
	if err := buildImage(ctx, archive); err != nil {
		return nil, err
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		return nil, err
	}
	r.cmd = exec.Command("containerd", "--config", filepath.Join(dir, "config.toml"))
	r.cmd.Stdout, r.cmd.Stderr = logf, logf
	r.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := r.cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("start containerd: %w", err)
	}
	logf.Close()
	ok := false
	defer func() {
		if !ok {
			r.Close()
		}
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := cri.Dial(ctx, r.Socket())
		if err == nil {
			c.Close()
			break
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("containerd's CRI did not answer in 30s: %w\n%s", err, r.LogTail())
		}
		time.Sleep(100 * time.Millisecond)
	}
	out, err := exec.CommandContext(ctx, "ctr", "--address", r.Socket(), "-n", "k8s.io", "images", "import",
		"--snapshotter", "native", archive).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("ctr images import: %w\n%s", err, out)
	}
	r.conn, err = grpc.NewClient("unix://"+r.Socket(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	r.RT = runtimeapi.NewRuntimeServiceClient(r.conn)
	ok = true
	return r, nil
}

// StartForTest starts a Runtime in a new directory under /run for t. When
// t ends it closes the runtime, then removes what runc made of the cgroup
// tree cgroupParent (relative to the cgroup root; "" for none): in every
// hierarchy, or only the cgroup v1 ones when v1Only (the cgroup2 tree is
// someone else's to remove, such as localnode's).
func StartForTest(t testing.TB, cgroupParent string, v1Only bool) *Runtime {
	t.Helper()
	dir, err := os.MkdirTemp("/run", "sidewall-containerd-")
	if err != nil {
		t.Fatal(err)
	}
	if cgroupParent != "" {
		t.Cleanup(func() {
			if err := removeCgroups(cgroupParent, v1Only); err != nil {
				t.Errorf("remove runc's cgroups under %s: %v", cgroupParent, err)
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	r, err := Start(ctx, dir)
	if err != nil {
		os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := r.Close(); err != nil {
			t.Errorf("containerd: %v", err)
		}
	})
	return r
}

// Socket is containerd's gRPC socket, which serves the CRI.
func (r *Runtime) Socket() string { return filepath.Join(r.dir, "containerd.sock") }

// LogTail is the end of containerd's log.
func (r *Runtime) LogTail() string {
	b, _ := os.ReadFile(filepath.Join(r.dir, "containerd.log"))
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

// Close removes every pod sandbox, stops containerd and deletes the
// bridge.
func (r *Runtime) Close() error {
	var errs []error
	if r.RT != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		if l, err := r.RT.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{}); err == nil {
			for _, s := range l.Items {
				r.RT.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: s.Id})
				if _, err := r.RT.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: s.Id}); err != nil {
					errs = append(errs, err)
				}
			}
		}
		cancel()
	}
	if r.conn != nil {
		r.conn.Close()
	}
	if r.cmd != nil && r.cmd.Process != nil {
		r.cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { r.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			syscall.Kill(-r.cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	}
	exec.Command("ip", "link", "del", r.Bridge).Run()
	// The native snapshotter's and the shims' mounts, if any are left.
	exec.Command("sh", "-c", "grep -o ' "+r.dir+"[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l").Run()
	if err := os.RemoveAll(r.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// ListenGateway listens on a free TCP port of the bridge's gateway address,
// in the host namespace, and accepts and closes every connection until the
// listener is closed: a peer the pods can connect to.
func (r *Runtime) ListenGateway() (net.Listener, error) {
	ln, err := net.Listen("tcp", net.JoinHostPort(r.Gateway.String(), "0"))
	if err != nil {
		return nil, err
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return ln, nil
}

// Pod is a pod sandbox started through the CRI.
type Pod struct {
	ID     string
	IP     netip.Addr
	config *runtimeapi.PodSandboxConfig
}

// RunPodSandbox starts pod's sandbox as kubelet would, in cgroupParent
// (the pod's cgroup, relative to the cgroup root, as kubelet's cgroupfs
// driver names it).
func (r *Runtime) RunPodSandbox(ctx context.Context, pod *corev1.Pod, cgroupParent string) (*Pod, error) {
	ns := &runtimeapi.NamespaceOption{Network: runtimeapi.NamespaceMode_POD, Pid: runtimeapi.NamespaceMode_CONTAINER, Ipc: runtimeapi.NamespaceMode_POD}
	cfg := &runtimeapi.PodSandboxConfig{
		Metadata: &runtimeapi.PodSandboxMetadata{Name: pod.Name, Uid: string(pod.UID), Namespace: pod.Namespace},
		Hostname: pod.Name, LogDirectory: filepath.Join(r.dir, "logs", string(pod.UID)),
		Labels: map[string]string{cri.PodNameLabel: pod.Name, cri.PodNamespaceLabel: pod.Namespace, cri.PodUIDLabel: string(pod.UID)},
		Linux: &runtimeapi.LinuxPodSandboxConfig{CgroupParent: cgroupParent,
			SecurityContext: &runtimeapi.LinuxSandboxSecurityContext{NamespaceOptions: ns}},
	}
	resp, err := r.RT.RunPodSandbox(ctx, &runtimeapi.RunPodSandboxRequest{Config: cfg})
	if err != nil {
		return nil, fmt.Errorf("RunPodSandbox %s: %w", pod.Name, err)
	}
	p := &Pod{ID: resp.PodSandboxId, config: cfg}
	st, err := r.RT.PodSandboxStatus(ctx, &runtimeapi.PodSandboxStatusRequest{PodSandboxId: p.ID})
	if err != nil {
		return nil, err
	}
	if p.IP, err = netip.ParseAddr(st.GetStatus().GetNetwork().GetIp()); err != nil {
		return nil, fmt.Errorf("sandbox %s: no IP: %w", pod.Name, err)
	}
	return p, nil
}

// StartContainer creates and starts a container of the test image with
// args, labelled as kubelet labels its containers. It returns the
// container id once StartContainer returned.
func (r *Runtime) StartContainer(ctx context.Context, p *Pod, name string, args ...string) (string, error) {
	md := p.config.Metadata
	cfg := &runtimeapi.ContainerConfig{
		Metadata: &runtimeapi.ContainerMetadata{Name: name},
		Image:    &runtimeapi.ImageSpec{Image: Image},
		Command:  []string{"/firstconn"}, Args: args,
		Labels: map[string]string{cri.ContainerNameLabel: name, cri.PodNameLabel: md.Name,
			cri.PodNamespaceLabel: md.Namespace, cri.PodUIDLabel: md.Uid},
		LogPath: name + ".log",
		Linux: &runtimeapi.LinuxContainerConfig{SecurityContext: &runtimeapi.LinuxContainerSecurityContext{
			NamespaceOptions: p.config.Linux.SecurityContext.NamespaceOptions}},
	}
	c, err := r.RT.CreateContainer(ctx, &runtimeapi.CreateContainerRequest{PodSandboxId: p.ID, Config: cfg, SandboxConfig: p.config})
	if err != nil {
		return "", fmt.Errorf("CreateContainer %s: %w", name, err)
	}
	if _, err := r.RT.StartContainer(ctx, &runtimeapi.StartContainerRequest{ContainerId: c.ContainerId}); err != nil {
		return "", fmt.Errorf("StartContainer %s: %w", name, err)
	}
	return c.ContainerId, nil
}

// WaitExit waits for a container to exit and returns its exit code and
// what it printed.
func (r *Runtime) WaitExit(ctx context.Context, p *Pod, id string) (int32, string, error) {
	for {
		st, err := r.RT.ContainerStatus(ctx, &runtimeapi.ContainerStatusRequest{ContainerId: id})
		if err != nil {
			return 0, "", err
		}
		if st.Status.State == runtimeapi.ContainerState_CONTAINER_EXITED {
			b, _ := os.ReadFile(filepath.Join(p.config.LogDirectory, st.Status.Metadata.Name+".log"))
			// CRI log lines: "<time> <stream> <tag> <text>".
			var out []string
			for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
				if f := strings.SplitN(l, " ", 4); len(f) == 4 {
					out = append(out, f[3])
				}
			}
			return st.Status.ExitCode, strings.Join(out, "\n"), nil
		}
		select {
		case <-ctx.Done():
			return 0, "", ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// RemovePodSandbox stops and removes the sandbox and its containers.
func (r *Runtime) RemovePodSandbox(ctx context.Context, p *Pod) error {
	if _, err := r.RT.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: p.ID}); err != nil {
		return err
	}
	_, err := r.RT.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: p.ID})
	return err
}

// buildImage writes an OCI image archive of one layer holding /firstconn,
// built here static, named Image for containerd's importer.
func buildImage(ctx context.Context, archive string) error {
	tmp, err := os.MkdirTemp("", "firstconn-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bin := filepath.Join(tmp, "firstconn")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/sidewall/sidewall/hack/harness/containerd/firstconn")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("build firstconn: %w\n%s", err, out)
	}
	exe, err := os.ReadFile(bin)
	if err != nil {
		return err
	}
	var layer bytes.Buffer
	tw := tar.NewWriter(&layer)
	tw.WriteHeader(&tar.Header{Name: "firstconn", Mode: 0o755, Size: int64(len(exe)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)})
	tw.Write(exe)
	for _, d := range []string{"dev/", "proc/", "sys/", "etc/", "tmp/"} {
		tw.WriteHeader(&tar.Header{Name: d, Mode: 0o755, Typeflag: tar.TypeDir, ModTime: time.Unix(0, 0)})
	}
	tw.Close()
	type desc struct {
		MediaType   string            `json:"mediaType"`
		Digest      string            `json:"digest"`
		Size        int               `json:"size"`
		Annotations map[string]string `json:"annotations,omitempty"`
		Platform    map[string]string `json:"platform,omitempty"`
	}
	blobs := map[string][]byte{}
	add := func(mt string, b []byte) desc {
		sum := sha256.Sum256(b)
		d := "sha256:" + hex.EncodeToString(sum[:])
		blobs[d] = b
		return desc{MediaType: mt, Digest: d, Size: len(b)}
	}
	layerDesc := add("application/vnd.oci.image.layer.v1.tar", layer.Bytes())
	config, _ := json.Marshal(map[string]any{
		"architecture": "amd64", "os": "linux",
		"config": map[string]any{"Entrypoint": []string{"/firstconn"}, "Cmd": []string{"pause"}},
		"rootfs": map[string]any{"type": "layers", "diff_ids": []string{layerDesc.Digest}},
	})
	configDesc := add("application/vnd.oci.image.config.v1+json", config)
	manifest, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": configDesc, "layers": []desc{layerDesc}})
	md := add("application/vnd.oci.image.manifest.v1+json", manifest)
	md.Annotations = map[string]string{"io.containerd.image.name": Image, "org.opencontainers.image.ref.name": "1"}
	md.Platform = map[string]string{"architecture": "amd64", "os": "linux"}
	index, _ := json.Marshal(map[string]any{"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []desc{md}})

	f, err := os.Create(archive)
	if err != nil {
		return err
	}
	defer f.Close()
	aw := tar.NewWriter(f)
	put := func(name string, b []byte) {
		aw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(b)), Typeflag: tar.TypeReg, ModTime: time.Unix(0, 0)})
		aw.Write(b)
	}
	put("oci-layout", []byte(`{"imageLayoutVersion":"1.0.0"}`))
	put("index.json", index)
	for d, b := range blobs {
		put("blobs/sha256/"+strings.TrimPrefix(d, "sha256:"), b)
	}
	return aw.Close()
}

func randHex(n int) string {
	b := make([]byte, n)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// removeCgroups removes the cgroup tree parent (relative to the cgroup
// root) in every mounted hierarchy, deepest first.
func removeCgroups(parent string, skipUnified bool) error {
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	var errs []error
	for _, root := range roots {
		if skipUnified && filepath.Base(root) == "unified" {
			continue
		}
		top := filepath.Join(root, parent)
		var dirs []string
		filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
