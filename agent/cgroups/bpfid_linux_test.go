package cgroups

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
)

const bpfChildEnv = "SIDEWALL_CGROUPS_TEST_BPF_CHILD"

// TestMain lets the test binary act as the process whose cgroup BPF reports
// (see TestIDIsWhatBPFSees).
func TestMain(m *testing.M) {
	if os.Getenv(bpfChildEnv) == "1" {
		id, err := bpfCurrentCgroupID()
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println(id)
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// bpfCurrentCgroupID runs a cgroup_skb program that stores
// bpf_get_current_cgroup_id() in a map, and reads it back.
func bpfCurrentCgroupID() (uint64, error) {
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		return 0, fmt.Errorf("create map: %w", err)
	}
	defer m.Close()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type:    ebpf.CGroupSKB,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.FnGetCurrentCgroupId.Call(),
			asm.StoreMem(asm.RFP, -8, asm.R0, asm.DWord),
			asm.StoreImm(asm.RFP, -12, 0, asm.Word),
			asm.LoadMapPtr(asm.R1, m.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -12),
			asm.Mov.Reg(asm.R3, asm.RFP),
			asm.Add.Imm(asm.R3, -8),
			asm.Mov.Imm(asm.R4, 0),
			asm.FnMapUpdateElem.Call(),
			asm.Mov.Imm(asm.R0, 1),
			asm.Return(),
		},
	})
	if err != nil {
		return 0, fmt.Errorf("load program: %w", err)
	}
	defer prog.Close()
	// Ethernet header (stripped by the kernel for cgroup_skb) + IPv4 header.
	pkt := make([]byte, 14+20)
	binary.BigEndian.PutUint16(pkt[12:], 0x0800)
	pkt[14] = 0x45
	if _, err := prog.Run(&ebpf.RunOptions{Data: pkt}); err != nil {
		return 0, fmt.Errorf("run program: %w", err)
	}
	var id uint64
	if err := m.Lookup(uint32(0), &id); err != nil {
		return 0, fmt.Errorf("read map: %w", err)
	}
	return id, nil
}

// TestIDIsWhatBPFSees checks the resolver's cgroup id against the id the
// kernel hands a BPF program running for a process in that cgroup.
func TestIDIsWhatBPFSees(t *testing.T) {
	mount, rel := testRoot(t)
	mkdirs(t, filepath.Join(mount, rel, "kubepods.slice"))
	r, err := NewResolver(Config{Mount: mount, Parent: rel})
	if err != nil {
		t.Fatal(err)
	}
	pod := kubeletPod(types.UID("dddd-"+randHex(4)), corev1.PodQOSBurstable, Containerd)
	pod.Status.InitContainerStatuses = nil
	pod.Status.EphemeralContainerStatuses = nil
	podDir, err := r.Layout().PodDir(pod.UID, corev1.PodQOSBurstable)
	if err != nil {
		t.Fatal(err)
	}
	cid, _ := ParseContainerID(pod.Status.ContainerStatuses[0].ContainerID)
	mkdirs(t, r.Layout().ContainerDir(podDir, cid))
	res, err := r.ResolvePod(pod)
	if err != nil {
		t.Fatal(err)
	}
	app, _ := res.Container("app")

	fd, err := syscall.Open(app.Path, syscall.O_RDONLY|syscall.O_DIRECTORY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer syscall.Close(fd)
	cmd := exec.Command(os.Args[0])
	cmd.Env = append(os.Environ(), bpfChildEnv+"=1")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	out, err := cmd.Output()
	if err != nil {
		var stderr []byte
		if ee, ok := err.(*exec.ExitError); ok {
			stderr = ee.Stderr
		}
		t.Fatalf("child in %s: %v: %s", app.Path, err, stderr)
	}
	got, err := strconv.ParseUint(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		t.Fatalf("child output %q: %v", out, err)
	}
	t.Logf("bpf_get_current_cgroup_id() in %s = %d (pod cgroup %d)", app.Path, got, res.CgroupID)
	if got != app.CgroupID {
		t.Errorf("bpf_get_current_cgroup_id() = %d in %s, resolver says %d", got, app.Path, app.CgroupID)
	}
}
