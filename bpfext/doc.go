// Package bpfext is the sidewall datapath: per-container L3/L4 enforcement
// in the kernel, driven by the node agent.
//
// Entry programs attach to a pod's cgroup v2 directory (cgroup_skb
// egress/ingress, cgroup/connect4|6, sendmsg4|6, bind4|6), classify each
// packet or socket call by the nearest cgroup the maps know, and tail-call a
// verdict program through a PROG_ARRAY, so replacing one array slot changes
// the verdict for every attached pod at once. The verdict resolves the peer
// to a security identity (Cilium's numbering) and decides with hash lookups
// only; its cost does not grow with the number of rules.
//
// Everything is pinned under one bpffs directory ([DefaultPinDir] by
// default): a restarted agent adopts the pinned maps with [Load], and the
// pinned cgroup links keep enforcing while no process holds them.
//
// See docs/datapath.md for the hook order, the map layout and what each
// hook sees.
package bpfext
