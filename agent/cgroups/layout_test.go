package cgroups

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestParseMounts(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
		err            bool
	}{
		{"hybrid", "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n", "/sys/fs/cgroup/unified", false},
		{"unified", "cgroup2 /sys/fs/cgroup cgroup2 rw,nsdelegate 0 0\n", "/sys/fs/cgroup", false},
		{"escaped space", `none /mnt/my\040cg cgroup2 rw 0 0`, "/mnt/my cg", false},
		{"v1 only", "cgroup /sys/fs/cgroup/cpu cgroup rw,cpu 0 0\n", "", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := ParseMounts(strings.NewReader(tc.in))
			if (err != nil) != tc.err {
				t.Fatalf("err = %v, want error %v", err, tc.err)
			}
			if got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestParseContainerID(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    ContainerID
		wantErr string
	}{
		{"containerd://abc123", ContainerID{Containerd, "abc123"}, ""},
		{"cri-o://def456", ContainerID{CRIO, "def456"}, ""},
		{"docker://0f0f", ContainerID{Docker, "0f0f"}, ""},
		{"abc123", ContainerID{}, "want <runtime>://<id>"},
		{"rkt://abc", ContainerID{}, `unsupported runtime "rkt"`},
		{"containerd://", ContainerID{}, "empty"},
		{"containerd://../../etc", ContainerID{}, "invalid character"},
	} {
		got, err := ParseContainerID(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("ParseContainerID(%q) err = %v, want it to contain %q", tc.in, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("ParseContainerID(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
		if got.String() != tc.in {
			t.Errorf("String() = %q, want %q", got.String(), tc.in)
		}
	}
}

func TestContainerDirNames(t *testing.T) {
	for _, tc := range []struct {
		id       ContainerID
		cgroupfs string
		systemd  string
	}{
		{ContainerID{Containerd, "aa11"}, "aa11", "cri-containerd-aa11.scope"},
		{ContainerID{CRIO, "bb22"}, "crio-bb22", "crio-bb22.scope"},
		{ContainerID{Docker, "cc33"}, "cc33", "docker-cc33.scope"},
	} {
		if got := tc.id.DirName(Cgroupfs); got != tc.cgroupfs {
			t.Errorf("%v cgroupfs dir = %q, want %q", tc.id, got, tc.cgroupfs)
		}
		if got := tc.id.DirName(Systemd); got != tc.systemd {
			t.Errorf("%v systemd dir = %q, want %q", tc.id, got, tc.systemd)
		}
		if got, ok := ParseContainerDir(Systemd, tc.systemd); !ok || got != tc.id {
			t.Errorf("ParseContainerDir(systemd, %q) = %v, %v; want %v", tc.systemd, got, ok, tc.id)
		}
		back, ok := ParseContainerDir(Cgroupfs, tc.cgroupfs)
		if !ok || back.ID != tc.id.ID {
			t.Errorf("ParseContainerDir(cgroupfs, %q) = %v, %v; want id %s", tc.cgroupfs, back, ok, tc.id.ID)
		}
	}
	for _, name := range []string{"crio-conmon-bb22.scope", "kubepods-burstable.slice", "cgroup.procs", "memory.max"} {
		if c, ok := ParseContainerDir(Systemd, name); ok {
			t.Errorf("ParseContainerDir(systemd, %q) = %v, want not a container", name, c)
		}
	}
	for _, name := range []string{"crio-conmon-bb22", "cgroup.procs", "cpu.max", "a_b"} {
		if c, ok := ParseContainerDir(Cgroupfs, name); ok {
			t.Errorf("ParseContainerDir(cgroupfs, %q) = %v, want not a container", name, c)
		}
	}
}

func TestLayoutPodDir(t *testing.T) {
	const uid = "1b2c3d4e-0000-4111-8222-933344445555"
	fs := Layout{Driver: Cgroupfs, Kubepods: "/cg/kubepods"}
	sd := Layout{Driver: Systemd, Kubepods: "/cg/kubepods.slice"}
	for _, tc := range []struct {
		l    Layout
		qos  corev1.PodQOSClass
		want string
	}{
		{fs, corev1.PodQOSGuaranteed, "/cg/kubepods/pod" + uid},
		{fs, corev1.PodQOSBurstable, "/cg/kubepods/burstable/pod" + uid},
		{fs, corev1.PodQOSBestEffort, "/cg/kubepods/besteffort/pod" + uid},
		{sd, corev1.PodQOSGuaranteed, "/cg/kubepods.slice/kubepods-pod1b2c3d4e_0000_4111_8222_933344445555.slice"},
		{sd, corev1.PodQOSBurstable, "/cg/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_0000_4111_8222_933344445555.slice"},
		{sd, corev1.PodQOSBestEffort, "/cg/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b2c3d4e_0000_4111_8222_933344445555.slice"},
	} {
		got, err := tc.l.PodDir(uid, tc.qos)
		if err != nil || got != tc.want {
			t.Errorf("%s %s: PodDir = %q, %v; want %q", tc.l.Driver, tc.qos, got, err, tc.want)
		}
	}
	if _, err := fs.PodDir("../x", corev1.PodQOSBurstable); err == nil || !strings.Contains(err.Error(), "pod uid") {
		t.Errorf("bad uid: err = %v, want a pod uid error", err)
	}
	if _, err := fs.PodDir(uid, "Platinum"); err == nil || !strings.Contains(err.Error(), "qos class") {
		t.Errorf("bad qos: err = %v, want a qos class error", err)
	}
}
