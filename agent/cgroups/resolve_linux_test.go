package cgroups

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/sidewall/sidewall/hack/harness"
)

// testRoot makes a unique directory in the real cgroup2 hierarchy standing in
// for kubelet's --cgroup-root, removed (leaves first) when the test ends,
// whatever its outcome.
func testRoot(t *testing.T) (mount, rel string) {
	t.Helper()
	harness.RequirePrivileged(t)
	mount, err := FindMount()
	if err != nil {
		t.Fatalf("find cgroup2 mount: %v", err)
	}
	rel = "sidewall-cgtest-" + randHex(6)
	abs := filepath.Join(mount, rel)
	if err := os.Mkdir(abs, 0o755); err != nil {
		t.Fatalf("create test root: %v", err)
	}
	t.Cleanup(func() {
		if err := removeTree(abs); err != nil {
			t.Errorf("clean up %s: %v", abs, err)
		}
	})
	return mount, rel
}

// removeTree removes a cgroup tree: cgroupfs only allows rmdir of a cgroup
// without children, and its interface files cannot be unlinked.
func removeTree(root string) error {
	var dirs []string
	err := filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
	var errs []error
	for _, d := range dirs {
		if err := syscall.Rmdir(d); err != nil && !errors.Is(err, syscall.ENOENT) {
			errs = append(errs, fmt.Errorf("rmdir %s: %w", d, err))
		}
	}
	return errors.Join(errs...)
}

func randHex(n int) string {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return hex.EncodeToString(b)
}

func mkdirs(t *testing.T, paths ...string) {
	t.Helper()
	for _, p := range paths {
		if err := os.MkdirAll(p, 0o755); err != nil {
			t.Fatalf("mkdir %s: %v", p, err)
		}
	}
}

func inode(t *testing.T, p string) uint64 {
	t.Helper()
	st, err := os.Stat(p)
	if err != nil {
		t.Fatalf("stat %s: %v", p, err)
	}
	ino := st.Sys().(*syscall.Stat_t).Ino
	// The kernel also exports the cgroup id as the file handle of the
	// directory (what systemd and Cilium read); both must agree.
	h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, p, 0)
	if err != nil {
		t.Fatalf("name_to_handle_at %s: %v", p, err)
	}
	if b := h.Bytes(); len(b) != 8 || binary.NativeEndian.Uint64(b) != ino {
		t.Fatalf("%s: file handle %x is not the inode %d", p, b, ino)
	}
	return ino
}

// startIn runs a sleeping process cloned straight into the cgroup at dir.
func startIn(t *testing.T, dir string) *exec.Cmd {
	t.Helper()
	fd, err := syscall.Open(dir, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	defer syscall.Close(fd)
	cmd := exec.Command("sleep", "60")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start process in %s: %v", dir, err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	})
	return cmd
}

func procCgroup(t *testing.T, pid int) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			return p
		}
	}
	t.Fatalf("no cgroup2 line in /proc/%d/cgroup: %s", pid, b)
	return ""
}

func running() corev1.ContainerState {
	return corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}}
}

// kubeletPod is a pod as kubelet reports it: a completed init container, a
// native sidecar, an app container and an ephemeral container, all running
// except the init container.
func kubeletPod(uid types.UID, qos corev1.PodQOSClass, rt Runtime) *corev1.Pod {
	always := corev1.ContainerRestartPolicyAlways
	id := func(s string) string { return string(rt) + "://" + s + randHex(8) }
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "web", UID: uid},
		Spec: corev1.PodSpec{
			InitContainers: []corev1.Container{{Name: "setup"}, {Name: "log-shipper", RestartPolicy: &always}},
			Containers:     []corev1.Container{{Name: "app"}},
		},
		Status: corev1.PodStatus{
			QOSClass: qos,
			InitContainerStatuses: []corev1.ContainerStatus{
				{Name: "setup", ContainerID: id("00"), State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0, Reason: "Completed"}}},
				{Name: "log-shipper", ContainerID: id("11"), State: running(), Started: new(true), Ready: true},
			},
			ContainerStatuses:          []corev1.ContainerStatus{{Name: "app", ContainerID: id("22"), State: running(), Ready: true}},
			EphemeralContainerStatuses: []corev1.ContainerStatus{{Name: "debug", ContainerID: id("33"), State: running()}},
		},
	}
}

func TestResolvePodRealHierarchy(t *testing.T) {
	for _, tc := range []struct {
		driver Driver
		rt     Runtime
		qos    corev1.PodQOSClass
		// nested: kubelet's cgroupRoot is /kubelet, as kind runs it.
		nested bool
	}{
		{Cgroupfs, Containerd, corev1.PodQOSBurstable, false},
		{Cgroupfs, CRIO, corev1.PodQOSBestEffort, false},
		{Cgroupfs, Containerd, corev1.PodQOSGuaranteed, false},
		{Systemd, Containerd, corev1.PodQOSBurstable, false},
		{Systemd, CRIO, corev1.PodQOSGuaranteed, false},
		{Systemd, Docker, corev1.PodQOSBestEffort, false},
		{Cgroupfs, Containerd, corev1.PodQOSBurstable, true},
		{Systemd, Containerd, corev1.PodQOSBestEffort, true},
		{Systemd, Containerd, corev1.PodQOSGuaranteed, true},
	} {
		t.Run(fmt.Sprintf("%s/%s/%s/nested=%t", tc.driver, tc.rt, tc.qos, tc.nested), func(t *testing.T) {
			mount, rel := testRoot(t)
			uid := types.UID("5f0e6a7b-1c2d-4e3f-8a9b-" + randHex(6))
			pod := kubeletPod(uid, tc.qos, tc.rt)

			// The paths kubelet and the runtime would create, written out
			// independently of the code under test.
			escaped := strings.ReplaceAll(string(uid), "-", "_")
			tier := strings.ToLower(string(tc.qos))
			var kubepods, podDir string
			switch {
			case tc.driver == Cgroupfs && tc.nested:
				kubepods = filepath.Join(mount, rel, "kubelet", "kubepods")
				podDir = filepath.Join(kubepods, tier, "pod"+string(uid))
			case tc.driver == Cgroupfs:
				kubepods = filepath.Join(mount, rel, "kubepods")
				podDir = filepath.Join(kubepods, tier, "pod"+string(uid))
				if tc.qos == corev1.PodQOSGuaranteed {
					podDir = filepath.Join(kubepods, "pod"+string(uid))
				}
			case tc.nested:
				// systemd names nested slices by their whole path.
				kubepods = filepath.Join(mount, rel, "kubelet.slice", "kubelet-kubepods.slice")
				podDir = filepath.Join(kubepods, "kubelet-kubepods-"+tier+".slice", "kubelet-kubepods-"+tier+"-pod"+escaped+".slice")
				if tc.qos == corev1.PodQOSGuaranteed {
					podDir = filepath.Join(kubepods, "kubelet-kubepods-pod"+escaped+".slice")
				}
			default:
				kubepods = filepath.Join(mount, rel, "kubepods.slice")
				podDir = filepath.Join(kubepods, "kubepods-"+tier+".slice", "kubepods-"+tier+"-pod"+escaped+".slice")
				if tc.qos == corev1.PodQOSGuaranteed {
					podDir = filepath.Join(kubepods, "kubepods-pod"+escaped+".slice")
				}
			}
			ctrDir := func(status string) string {
				id := status[strings.Index(status, "://")+3:]
				switch {
				case tc.driver == Cgroupfs && tc.rt == CRIO:
					return filepath.Join(podDir, "crio-"+id)
				case tc.driver == Cgroupfs:
					return filepath.Join(podDir, id)
				case tc.rt == CRIO:
					return filepath.Join(podDir, "crio-"+id+".scope")
				case tc.rt == Docker:
					return filepath.Join(podDir, "docker-"+id+".scope")
				default:
					return filepath.Join(podDir, "cri-containerd-"+id+".scope")
				}
			}
			want := map[string]string{
				"log-shipper": ctrDir(pod.Status.InitContainerStatuses[1].ContainerID),
				"app":         ctrDir(pod.Status.ContainerStatuses[0].ContainerID),
				"debug":       ctrDir(pod.Status.EphemeralContainerStatuses[0].ContainerID),
			}
			wantRole := map[string]Role{"log-shipper": RoleSidecar, "app": RoleApp, "debug": RoleEphemeral}

			// Only kubepods exists: the pod is not there yet.
			mkdirs(t, kubepods)
			r, err := NewResolver(Config{Mount: mount, Parent: rel})
			if err != nil {
				t.Fatalf("NewResolver: %v", err)
			}
			if got := r.Layout(); got.Driver != tc.driver || got.Kubepods != kubepods {
				t.Fatalf("detected layout %+v, want driver %s at %s", got, tc.driver, kubepods)
			}
			_, err = r.ResolvePod(pod)
			var nr *NotReadyError
			if !errors.Is(err, ErrNotReady) || !errors.As(err, &nr) || nr.Container != "" || nr.Path != podDir {
				t.Fatalf("missing pod cgroup: err = %v, want a NotReadyError for %s", err, podDir)
			}

			// Pod cgroup and the app's only: the sidecar and the debug
			// container are not ready, the app resolves.
			mkdirs(t, podDir, want["app"])
			got, err := r.ResolvePod(pod)
			if !errors.Is(err, ErrNotReady) {
				t.Fatalf("missing container cgroups: err = %v, want ErrNotReady", err)
			}
			for _, name := range []string{"log-shipper", "debug"} {
				if !strings.Contains(err.Error(), "container "+name+": cgroup "+want[name]) {
					t.Errorf("error %q does not name container %s and %s", err, name, want[name])
				}
			}
			if got == nil || len(got.Containers) != 1 || got.Containers[0].Name != "app" {
				t.Fatalf("partial result = %+v, want just the app", got)
			}

			mkdirs(t, want["log-shipper"], want["debug"])
			got, err = r.ResolvePod(pod)
			if err != nil {
				t.Fatalf("ResolvePod: %v", err)
			}
			if got.Path != podDir || got.CgroupID != inode(t, podDir) || got.QOS != tc.qos {
				t.Errorf("pod = %s id %d qos %s; want %s id %d qos %s", got.Path, got.CgroupID, got.QOS, podDir, inode(t, podDir), tc.qos)
			}
			if len(got.Containers) != len(want) {
				t.Fatalf("resolved %d containers (%+v), want %d: the completed init container has no cgroup", len(got.Containers), got.Containers, len(want))
			}
			for _, c := range got.Containers {
				if c.Path != want[c.Name] || c.Role != wantRole[c.Name] || c.CgroupID != inode(t, want[c.Name]) || c.ID.Runtime != tc.rt {
					t.Errorf("container %s = %+v; want path %s role %s id %d", c.Name, c, want[c.Name], wantRole[c.Name], inode(t, want[c.Name]))
				}
			}

			// A real process in the app's cgroup: the kernel puts it where
			// the resolver says.
			app, _ := got.Container("app")
			cmd := startIn(t, app.Path)
			if p := procCgroup(t, cmd.Process.Pid); filepath.Join(mount, p) != app.Path {
				t.Errorf("process cgroup %s, resolver says %s", filepath.Join(mount, p), app.Path)
			}

			// Without status.qosClass the tiers are probed.
			noQOS := pod.DeepCopy()
			noQOS.Status.QOSClass = ""
			if p, err := r.ResolvePod(noQOS); err != nil || p.Path != podDir || p.QOS != tc.qos {
				t.Errorf("probe qos: %+v, %v; want %s %s", p, err, podDir, tc.qos)
			}
		})
	}
}

func TestPodDirs(t *testing.T) {
	for _, tc := range []struct {
		driver Driver
		root   string
	}{{Cgroupfs, "kubepods"}, {Systemd, "kubepods.slice"}} {
		t.Run(string(tc.driver), func(t *testing.T) {
			mount, rel := testRoot(t)
			l := Layout{Driver: tc.driver, Kubepods: filepath.Join(mount, rel, tc.root)}
			want := map[types.UID]string{}
			for _, qos := range []corev1.PodQOSClass{corev1.PodQOSGuaranteed, corev1.PodQOSBurstable, corev1.PodQOSBestEffort} {
				uid := types.UID("ffff-" + randHex(2) + "-" + randHex(4))
				dir, err := l.PodDir(uid, qos)
				if err != nil {
					t.Fatal(err)
				}
				mkdirs(t, dir, filepath.Join(dir, "0123abcd"))
				want[uid] = dir
			}
			r, err := NewResolver(Config{Mount: mount, Parent: rel})
			if err != nil {
				t.Fatal(err)
			}
			got, err := r.PodDirs()
			if err != nil {
				t.Fatal(err)
			}
			if fmt.Sprint(got) != fmt.Sprint(want) {
				t.Errorf("PodDirs = %v, want %v", got, want)
			}
		})
	}
}

func TestResolveContainerRestart(t *testing.T) {
	mount, rel := testRoot(t)
	kubepods := filepath.Join(mount, rel, "kubepods")
	mkdirs(t, kubepods)
	r, err := NewResolver(Config{Mount: mount, Root: filepath.Join(rel, "kubepods")})
	if err != nil {
		t.Fatalf("NewResolver: %v", err)
	}
	pod := kubeletPod(types.UID("aaaa-"+randHex(4)), corev1.PodQOSBurstable, Containerd)
	pod.Status.EphemeralContainerStatuses = nil
	podDir := filepath.Join(kubepods, "burstable", "pod"+string(pod.UID))
	id := func(s string) string { return strings.TrimPrefix(s, "containerd://") }
	mkdirs(t, filepath.Join(podDir, id(pod.Status.ContainerStatuses[0].ContainerID)),
		filepath.Join(podDir, id(pod.Status.InitContainerStatuses[1].ContainerID)))
	before, err := r.ResolvePod(pod)
	if err != nil {
		t.Fatal(err)
	}
	oldApp, _ := before.Container("app")

	// The runtime removes the old container's cgroup and creates the new
	// one; kubelet then reports the new id.
	if err := syscall.Rmdir(oldApp.Path); err != nil {
		t.Fatal(err)
	}
	_, err = r.ResolvePod(pod)
	if !errors.Is(err, ErrNotReady) {
		t.Fatalf("stale status after restart: err = %v, want ErrNotReady", err)
	}
	newID := "containerd://" + randHex(32)
	mkdirs(t, filepath.Join(podDir, id(newID)))
	pod.Status.ContainerStatuses[0].ContainerID = newID
	pod.Status.ContainerStatuses[0].RestartCount = 1
	after, err := r.ResolvePod(pod)
	if err != nil {
		t.Fatal(err)
	}
	newApp, _ := after.Container("app")
	if newApp.Path != filepath.Join(podDir, id(newID)) || newApp.CgroupID == oldApp.CgroupID || newApp.RestartCount != 1 {
		t.Errorf("after restart app = %+v; want new path and id (old id %d) and restartCount 1", newApp, oldApp.CgroupID)
	}
	if newApp.CgroupID != inode(t, newApp.Path) {
		t.Errorf("cgroup id %d, inode %d", newApp.CgroupID, inode(t, newApp.Path))
	}

	// A crash-looping container (waiting, its last id still in status) has
	// no cgroup and is not waited for.
	pod.Status.ContainerStatuses[0].State = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}}
	if p, err := r.ResolvePod(pod); err != nil || len(p.Containers) != 1 {
		t.Errorf("waiting container: %+v, %v; want only the sidecar and no error", p, err)
	}
}

func TestResolveBadInput(t *testing.T) {
	mount, rel := testRoot(t)
	mkdirs(t, filepath.Join(mount, rel, "kubepods"))
	r, err := NewResolver(Config{Mount: mount, Parent: rel})
	if err != nil {
		t.Fatal(err)
	}
	pod := kubeletPod("bbbb-"+types.UID(randHex(4)), corev1.PodQOSBurstable, Containerd)
	podDir := filepath.Join(mount, rel, "kubepods", "burstable", "pod"+string(pod.UID))
	mkdirs(t, podDir, filepath.Join(podDir, strings.TrimPrefix(pod.Status.InitContainerStatuses[1].ContainerID, "containerd://")))
	pod.Status.ContainerStatuses[0].ContainerID = "rkt://1234"
	pod.Status.EphemeralContainerStatuses = nil
	p, err := r.ResolvePod(pod)
	if err == nil || !strings.Contains(err.Error(), "status.containerStatuses[0].containerID") || errors.Is(err, ErrNotReady) {
		t.Errorf("bad container id: err = %v; want a permanent error naming status.containerStatuses[0].containerID", err)
	}
	if p == nil || len(p.Containers) != 1 || p.Containers[0].Name != "log-shipper" {
		t.Errorf("other containers not resolved: %+v", p)
	}

	for _, cfg := range []struct {
		c    Config
		want string
	}{
		{Config{Mount: mount, Root: "../../etc"}, "outside the cgroup2 mount"},
		{Config{Mount: "/proc"}, "not a cgroup2 filesystem"},
		{Config{Mount: mount, Root: filepath.Join(rel, "kubepods"), Driver: "openrc"}, `driver "openrc"`},
		{Config{Mount: mount, Root: filepath.Join(rel, "kubepods"), Driver: Systemd}, "needs a .slice"},
	} {
		if _, err := NewResolver(cfg.c); err == nil || !strings.Contains(err.Error(), cfg.want) {
			t.Errorf("NewResolver(%+v) err = %v, want %q", cfg.c, err, cfg.want)
		}
	}
	if _, err := NewResolver(Config{Mount: mount, Parent: filepath.Join(rel, "nothing")}); !errors.Is(err, ErrNotReady) {
		t.Errorf("no kubepods yet: err = %v, want ErrNotReady", err)
	}
}

func TestWatcher(t *testing.T) {
	for _, driver := range []Driver{Cgroupfs, Systemd} {
		t.Run(string(driver), func(t *testing.T) {
			mount, rel := testRoot(t)
			uid := types.UID("cccc-" + randHex(4))
			name := "kubepods"
			if driver == Systemd {
				name = "kubepods.slice"
			}
			layout := Layout{Driver: driver, Kubepods: filepath.Join(mount, rel, name)}
			podDir, err := layout.PodDir(uid, corev1.PodQOSBurstable)
			if err != nil {
				t.Fatal(err)
			}
			w, err := NewWatcher(driver)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = w.Close() })

			// Neither the pod dir nor its parent exist yet.
			if _, err := w.Watch(uid, podDir); !errors.Is(err, ErrNotReady) {
				t.Fatalf("watch with a missing parent: err = %v, want ErrNotReady", err)
			}
			// The agent may learn of a pod before kubelet creates its
			// cgroup: the containers are reported once it appears.
			early := types.UID("eeee-" + randHex(4))
			earlyDir, _ := layout.PodDir(early, corev1.PodQOSBurstable)
			mkdirs(t, filepath.Dir(earlyDir))
			if evs, err := w.Watch(early, earlyDir); err != nil || len(evs) != 0 {
				t.Fatalf("watch a pod not created yet: %v, %v; want nothing", evs, err)
			}
			earlyCtr := ContainerID{Runtime: Containerd, ID: randHex(32)}
			mkdirs(t, earlyDir)
			mkdirs(t, layout.ContainerDir(earlyDir, earlyCtr))
			ev := next(t, w, early)
			if ev.Op != Created || ev.PodUID != early || ev.Container.ID != earlyCtr.ID {
				t.Fatalf("event %+v; want the container of the pod created after Watch", ev)
			}

			first := ContainerID{Runtime: Containerd, ID: randHex(32)}
			mkdirs(t, layout.ContainerDir(podDir, first))
			existing, err := w.Watch(uid, podDir)
			if err != nil {
				t.Fatal(err)
			}
			if len(existing) != 1 || existing[0].Container.ID != first.ID || existing[0].CgroupID != inode(t, existing[0].Path) {
				t.Fatalf("existing = %+v, want the one container %s", existing, first.ID)
			}

			// Neither a conmon scope, a nested slice, nor a file is a
			// container; the next event must be the real container.
			noise := filepath.Join(podDir, "crio-conmon-"+randHex(4)+".scope")
			if driver == Cgroupfs {
				noise = filepath.Join(podDir, "crio-conmon-"+randHex(4))
			}
			mkdirs(t, noise)
			second := ContainerID{Runtime: CRIO, ID: randHex(32)}
			dir := layout.ContainerDir(podDir, second)
			mkdirs(t, dir)
			ev = next(t, w, uid)
			if ev.Op != Created || ev.PodUID != uid || ev.Path != dir || ev.Container.ID != second.ID || ev.CgroupID != inode(t, dir) {
				t.Fatalf("event %+v; want created %s id %d", ev, dir, inode(t, dir))
			}
			if ev.Container.Runtime != CRIO {
				t.Errorf("runtime %q from dir name, want cri-o", ev.Container.Runtime)
			}
			id := ev.CgroupID
			if err := syscall.Rmdir(dir); err != nil {
				t.Fatal(err)
			}
			ev = next(t, w, uid)
			if ev.Op != Removed || ev.Path != dir || ev.CgroupID != id {
				t.Fatalf("event %+v; want removed %s id %d", ev, dir, id)
			}

			if err := w.Unwatch(uid); err != nil {
				t.Fatal(err)
			}
			mkdirs(t, layout.ContainerDir(podDir, ContainerID{Runtime: Containerd, ID: randHex(32)}))
			select {
			case ev := <-w.Events():
				t.Fatalf("event %+v after Unwatch", ev)
			case <-time.After(200 * time.Millisecond):
			}
		})
	}
}

// next returns the next event of pod uid; events of other pods (a
// container both listed and reported by inotify comes twice) are skipped.
func next(t *testing.T, w *Watcher, uid types.UID) Event {
	t.Helper()
	timeout := time.After(5 * time.Second)
	for {
		select {
		case ev := <-w.Events():
			if ev.PodUID == uid {
				return ev
			}
		case err := <-w.Errors():
			t.Fatalf("watcher error: %v", err)
		case <-timeout:
			t.Fatal("no watcher event within 5s")
		}
	}
}

// BenchmarkWatcherLatency measures the time from a runtime's mkdir of a
// container cgroup to the watcher's event: the part of a new container's
// unclassified window that the watcher adds.
func BenchmarkWatcherLatency(b *testing.B) {
	mount, err := FindMount()
	if err != nil {
		b.Fatal(err)
	}
	root := filepath.Join(mount, "sidewall-cgbench-"+randHex(6))
	podDir := filepath.Join(root, "kubepods", "burstable", "podbench")
	if err := os.MkdirAll(podDir, 0o755); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := removeTree(root); err != nil {
			b.Errorf("clean up: %v", err)
		}
	})
	w, err := NewWatcher(Cgroupfs)
	if err != nil {
		b.Fatal(err)
	}
	defer w.Close()
	if _, err := w.Watch("bench", podDir); err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		dir := filepath.Join(podDir, fmt.Sprintf("%064x", i))
		if err := os.Mkdir(dir, 0o755); err != nil {
			b.Fatal(err)
		}
		for ev := range w.Events() {
			if ev.Op == Created && ev.Path == dir {
				break
			}
		}
		b.StopTimer()
		if err := syscall.Rmdir(dir); err != nil {
			b.Fatal(err)
		}
		for ev := range w.Events() {
			if ev.Op == Removed && ev.Path == dir {
				break
			}
		}
		b.StartTimer()
	}
}
