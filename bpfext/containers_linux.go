package bpfext

import (
	"fmt"

	"github.com/sidewall/sidewall/bpfext/objs"
)

func (c Container) info() (objs.SkbContainerInfo, error) {
	if c.CgroupID == 0 {
		return objs.SkbContainerInfo{}, fmt.Errorf("container: cgroup id must not be 0")
	}
	if !c.DenyAll && (c.ContainerID == 0 || c.ContainerID == localPeerUnknown) {
		return objs.SkbContainerInfo{}, fmt.Errorf("container of cgroup %d: container id %d is reserved", c.CgroupID, c.ContainerID)
	}
	var f uint32
	if c.EgressRestricted {
		f |= cfEgressRestricted
	}
	if c.IngressRestricted {
		f |= cfIngressRestricted
	}
	if c.Audit {
		f |= cfAudit
	}
	if c.DenyAll {
		f |= cfDenyAll
	}
	if c.FailOpen {
		f |= cfFailOpen
	}
	if c.FQDN {
		f |= cfFQDN
	}
	return objs.SkbContainerInfo{PolicyId: c.PolicyID, PodId: c.PodID, ContainerId: c.ContainerID, Flags: f}, nil
}

// UpsertContainers writes cgroup -> container classification entries.
func (d *Datapath) UpsertContainers(cs []Container) error {
	keys := make([]uint64, 0, len(cs))
	vals := make([]objs.SkbContainerInfo, 0, len(cs))
	for _, c := range cs {
		v, err := c.info()
		if err != nil {
			return err
		}
		keys = append(keys, c.CgroupID)
		vals = append(vals, v)
	}
	return d.changed(batchPut(d.skb.SwContainers, "containers", keys, vals))
}

// DeleteContainers removes the classification of cgroups.
func (d *Datapath) DeleteContainers(cgroupIDs []uint64) error {
	return d.changed(batchDelete(d.skb.SwContainers, "containers", cgroupIDs))
}

// Containers lists the classification entries (for adoption and GC).
func (d *Datapath) Containers() ([]Container, error) {
	keys, vals, err := readAll[uint64, objs.SkbContainerInfo](d.skb.SwContainers, "containers")
	if err != nil {
		return nil, err
	}
	out := make([]Container, 0, len(keys))
	for i, k := range keys {
		out = append(out, containerFromInfo(k, vals[i]))
	}
	return out, nil
}

func containerFromInfo(cgroupID uint64, v objs.SkbContainerInfo) Container {
	return Container{
		CgroupID: cgroupID, PolicyID: v.PolicyId, PodID: v.PodId, ContainerID: v.ContainerId,
		EgressRestricted: v.Flags&cfEgressRestricted != 0, IngressRestricted: v.Flags&cfIngressRestricted != 0,
		Audit: v.Flags&cfAudit != 0, DenyAll: v.Flags&cfDenyAll != 0, FailOpen: v.Flags&cfFailOpen != 0,
	}
}
