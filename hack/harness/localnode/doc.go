// Package localnode plays the kubelet and the container runtime of one node
// for real, without containers, so sidewall's node agent can be tested, and
// demonstrated, against a real kube-apiserver (envtest) and the real kernel.
//
// For each pod it creates the Pod object bound to the local node, the
// kubepods cgroup hierarchy in the cgroupfs driver's layout (under a unique
// root inside the cgroup2 mount), a pod cgroup with one cgroup per container
// and one for the pod sandbox (containerd makes one for the pause container),
// and a network namespace with a veth to a per-node bridge and an address from
// a private range, then writes the pod status as kubelet does (phase Running,
// podIP, container ids "containerd://<id>", ready, started, restartCount)
// through the status subresource.
//
// "Container processes" are real processes cloned straight into the
// container's cgroup (clone3 CLONE_INTO_CGROUP) from a thread that has
// entered the pod's network namespace, so they are in both from their first
// instruction. Listen, Dial and HTTP run a small built-in server or client
// that way and report the error the process got (EPERM, a timeout, or
// success), which is what enforcement tests assert.
//
// The built-in server and client are this binary re-executed: any program
// that imports localnode (a test binary, the demo) serves as its own helper,
// through the package's init when the SIDEWALL_LOCALNODE_HELPER environment
// variable is set. Nothing else happens in init.
//
// Everything is removed by Close, which is idempotent and safe to call from
// t.Cleanup, a deferred call or a signal handler: processes, network
// namespaces, veths, the bridge, cgroups and the API objects it created.
// Namespaces it had to create are left in place (envtest has no namespace
// controller to finish deleting them).
//
// Pod addresses come from a /16 in 10.128.0.0/9 that no host address or
// route overlaps (the lock file /run/sidewall-localnode.lock keeps parallel
// test processes from picking the same one); pods get no default route, so
// their traffic never leaves the node's bridge.
//
// Everything needs root.
package localnode
