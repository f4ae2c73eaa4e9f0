// Package cgroups finds the cgroup v2 directory, and its cgroup id, of every
// container of a Kubernetes pod on this node, the way kubelet and the
// container runtime name them, and watches pod cgroup directories so a new
// container is seen the moment its runtime creates its cgroup.
//
// The cgroup id returned is the directory's inode number on the cgroup2
// filesystem, the value bpf_get_current_cgroup_id and bpf_skb_cgroup_id
// return in BPF programs, so it is the key the datapath classifies by.
//
// Layouts, for a pod with UID 1234-ab (kubelet's --cgroup-root "/"):
//
//	cgroupfs: kubepods/[burstable/|besteffort/]pod1234-ab/<runtime dir>
//	systemd:  kubepods.slice/[kubepods-burstable.slice/]kubepods[-burstable]-pod1234_ab.slice/<runtime dir>
//
// where the runtime dir of container id <id> is
//
//	containerd: <id>            (systemd: cri-containerd-<id>.scope)
//	CRI-O:      crio-<id>       (systemd: crio-<id>.scope)
//	docker:     <id>            (systemd: docker-<id>.scope)
//
// Guaranteed pods sit directly under kubepods. The names follow kubelet's
// pkg/kubelet/cm (CgroupName.ToSystemd, GetPodContainerName), containerd's CRI
// plugin and CRI-O's cgmgr.
package cgroups
