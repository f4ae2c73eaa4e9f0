package agent_test

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	corev1 "k8s.io/api/core/v1"
)

// Offsets in struct bpf_sock_addr (include/uapi/linux/bpf.h).
const (
	sockAddrUserIP4  = 4
	sockAddrUserPort = 24
)

// rawU32 is a network-order address or port as the program loads it from
// the context: its bytes read as a native (little-endian) u32.
func rawU32(b [4]byte) int64 {
	return int64(uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24)
}

func rawPort(p uint16) int64 { return rawU32([4]byte{byte(p >> 8), byte(p), 0, 0}) }

// attachSocketLB attaches, at the node's cgroup root above every pod
// cgroup, a cgroup/connect4 program that rewrites vip to backend, the way
// Cilium's socket LB (cil_sock4_connect) does. The kernel runs it after
// sidewall's connect4 on the pod cgroup, so sidewall sees the vip.
func attachSocketLB(t *testing.T, root string, vip, backend netip.AddrPort) {
	t.Helper()
	attachSocketLBHook(t, root, ebpf.AttachCGroupInet4Connect, vip, backend)
}

// attachSocketLBHook is attachSocketLB at one hook: connect4, or sendmsg4
// for unconnected UDP (cil_sock4_sendmsg).
func attachSocketLBHook(t *testing.T, root string, hook ebpf.AttachType, vip, backend netip.AddrPort) {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.CGroupSockAddr, AttachType: hook, License: "GPL",
		Instructions: asm.Instructions{
			asm.Mov.Reg(asm.R6, asm.R1),
			asm.LoadMem(asm.R2, asm.R6, sockAddrUserIP4, asm.Word),
			asm.JNE.Imm32(asm.R2, int32(rawU32(vip.Addr().As4())), "out"),
			asm.LoadMem(asm.R3, asm.R6, sockAddrUserPort, asm.Word),
			asm.JNE.Imm32(asm.R3, int32(rawPort(vip.Port())), "out"),
			asm.StoreImm(asm.R6, sockAddrUserIP4, rawU32(backend.Addr().As4()), asm.Word),
			asm.StoreImm(asm.R6, sockAddrUserPort, rawPort(backend.Port()), asm.Word),
			asm.Mov.Imm(asm.R0, 1).WithSymbol("out"),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatalf("load socket LB stand-in: %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	l, err := link.AttachCgroup(link.CgroupOptions{Path: root, Attach: hook, Program: prog})
	if err != nil {
		t.Fatalf("attach socket LB stand-in to %s: %v", root, err)
	}
	t.Cleanup(func() { l.Close() })
}

// Services decided on their backends, with a socket load balancer at the
// node's cgroup root that rewrites the ClusterIP after sidewall's hook has
// seen it, as Cilium's does (the real one is in agent/e2e).
func TestAgentDecidesServicesOnBackends(t *testing.T) {
	h := newHarness(t)
	h.applyPolicy(policyTo("a"))
	a := h.runPod("peer-a", map[string]string{"app": "a"}, false)
	b := h.runPod("peer-b", map[string]string{"app": "b"}, false)
	h.Listen(a, "app", "tcp", 8080)
	h.Listen(b, "app", "tcp", 8080)
	web := h.runPod("web", map[string]string{"app": "web"}, true)

	svcA := h.CreateService(h.Namespace, "svc-a", a, "http", corev1.ProtocolTCP, 80, 8080)
	svcB := h.CreateService(h.Namespace, "svc-b", b, "http", corev1.ProtocolTCP, 80, 8080)
	root := filepath.Join(h.Local.CgroupMount(), h.Local.CgroupRoot())
	attachSocketLB(t, root, svcA, netip.AddrPortFrom(a.IP, 8080))
	attachSocketLB(t, root, svcB, netip.AddrPortFrom(b.IP, 8080))

	dial := func(container string, svc netip.AddrPort, allowed bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			_, err := h.Local.Dial(context.Background(), web, container, "tcp", svc.String(), 2*time.Second)
			if allowed && err == nil || !allowed && errors.Is(err, syscall.EPERM) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("web/%s -> %s: got %v, want allowed=%t", container, svc, err, allowed)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	dial("log-shipper", svcA, true)  // its backend is granted
	dial("log-shipper", svcB, false) // its backend is not: EPERM at connect
	dial("app", svcB, true)          // unrestricted
	dial("app", svcA, true)          // policyTo shares the grant with the pod
}

// The same for unconnected UDP: a sendmsg4 program at the node's cgroup
// root rewrites the Service address after sidewall's sendmsg4 saw it, as
// Cilium's cil_sock4_sendmsg does.
func TestAgentDecidesUDPServicesOnBackends(t *testing.T) {
	h := newHarness(t)
	h.applyPolicy(`
metadata: {name: shipper}
spec:
  podSelector: {matchLabels: {app: web}}
  containers: {names: [log-shipper]}
  egress:
  - toEndpoints: [{matchLabels: {app: a}}]
    toPorts: [{ports: [{port: "5353", protocol: UDP}]}]
`)
	a := h.runPod("peer-a", map[string]string{"app": "a"}, false)
	b := h.runPod("peer-b", map[string]string{"app": "b"}, false)
	h.Listen(a, "app", "udp", 5353)
	h.Listen(b, "app", "udp", 5353)
	web := h.runPod("web", map[string]string{"app": "web"}, true)

	svcA := h.CreateService(h.Namespace, "dns-a", a, "dns", corev1.ProtocolUDP, 53, 5353)
	svcB := h.CreateService(h.Namespace, "dns-b", b, "dns", corev1.ProtocolUDP, 53, 5353)
	root := filepath.Join(h.Local.CgroupMount(), h.Local.CgroupRoot())
	attachSocketLBHook(t, root, ebpf.AttachCGroupUDP4Sendmsg, svcA, netip.AddrPortFrom(a.IP, 5353))
	attachSocketLBHook(t, root, ebpf.AttachCGroupUDP4Sendmsg, svcB, netip.AddrPortFrom(b.IP, 5353))

	send := func(container string, svc netip.AddrPort, allowed bool) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for {
			_, err := h.Local.Dial(context.Background(), web, container, "sendto", svc.String(), 2*time.Second)
			if allowed && err == nil || !allowed && errors.Is(err, syscall.EPERM) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("web/%s sendto %s: got %v, want allowed=%t", container, svc, err, allowed)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	send("log-shipper", svcA, true)  // its backend is granted
	send("log-shipper", svcB, false) // its backend is not: EPERM at sendto
	send("app", svcB, true)          // unrestricted
}
