/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* The decision shared by the packet and socket verdict programs: map
 * lookups only, never a scan of rules, so the cost does not grow with the
 * number of rules. */
#pragma once

#include "common.h"
#include "maps.h"

struct tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport; /* host order */
	__u16 dport;
	__u8 family; /* 4 or 6 */
	__u8 proto;
	__u8 has_ports;
	__u8 pad;
};

struct decision {
	__u32 policy_id;
	__u32 rule_id;
	__u32 peer;
	__u8 verdict;
	__u8 reason;
	__u8 local;
	__u8 pad;
};

static __always_inline int is_restricted(const struct container_info *ci, __u8 dir)
{
	return ci->flags & (dir == DIR_EGRESS ? CF_EGRESS_RESTRICTED : CF_INGRESS_RESTRICTED);
}

/* Identities sidewall's own maps decide even when Cilium's ipcache holds
 * the address: world (2, and world-ipv4/-ipv6 9 and 10 in dual stack) and
 * Cilium's node-local CIDR/FQDN identities (scope 1 << 24), whose numbers
 * sidewall's rules do not use. */
static __always_inline int cilium_identity_decides(__u32 id)
{
	return id != 0 && id != IDENTITY_WORLD && id != 9 && id != 10 && (id >> 24) == 0;
}

static __always_inline __u32 resolve_identity(__u8 family, const __u8 *addr)
{
	struct cilium_remote_endpoint_info *ep;
	struct cilium_ipcache_key ck = {};
	__u32 *id;

	ck.family = family == 4 ? 1 : 2;
	ck.prefixlen = 32 + (family == 4 ? 32 : 128);
	if (family == 4)
		__builtin_memcpy(ck.addr, addr, 4);
	else
		__builtin_memcpy(ck.addr, addr, 16);
	ep = bpf_map_lookup_elem(&sw_cilium_ipcache, &ck);
	if (ep && cilium_identity_decides(ep->sec_identity))
		return ep->sec_identity;

	if (family == 4) {
		__u32 a = *(const __u32 *)addr;
		struct ip4_lpm_key k = { .prefixlen = 32, .addr = a };

		id = bpf_map_lookup_elem(&sw_ident4, &a);
		if (id)
			return *id;
		id = bpf_map_lookup_elem(&sw_cidr4, &k);
	} else {
		struct ip6_lpm_key k = { .prefixlen = 128 };

		__builtin_memcpy(k.addr, addr, 16);
		id = bpf_map_lookup_elem(&sw_ident6, k.addr);
		if (id)
			return *id;
		id = bpf_map_lookup_elem(&sw_cidr6, &k);
	}
	return id ? *id : IDENTITY_WORLD;
}

/* Loopback, or the pod's own address: traffic that never leaves the pod. */
static __always_inline int is_pod_local(__u8 family, const __u8 *addr, __u32 pod_id)
{
	struct pod_info *pod;

	if (family == 4) {
		if (addr[0] == 127)
			return 1;
	} else {
		const __u32 *w = (const __u32 *)addr;

		if (w[0] == 0 && w[1] == 0 && w[2] == 0 && w[3] == bpf_htonl(1))
			return 1;
	}
	pod = bpf_map_lookup_elem(&sw_pods, &pod_id);
	if (!pod)
		return 0;
	if (family == 4)
		return pod->ip4 != 0 && pod->ip4 == *(const __u32 *)addr;
	{
		const __u32 *w = (const __u32 *)addr;
		const __u32 *p = (const __u32 *)pod->ip6;

		if ((p[0] | p[1] | p[2] | p[3]) == 0)
			return 0;
		return p[0] == w[0] && p[1] == w[1] && p[2] == w[2] && p[3] == w[3];
	}
}

/* The container of the pod that owns (proto, port), or 0. */
static __always_inline __u64 local_port_owner(__u32 pod_id, __u8 proto, __u16 port)
{
	struct local_port_key k = { .pod_id = pod_id, .port = port, .proto = proto };
	__u64 *cg = bpf_map_lookup_elem(&sw_local_ports, &k);

	return cg ? *cg : 0;
}

static __always_inline __u32 local_container_id(__u64 cgid)
{
	struct container_info *ci;

	if (!cgid)
		return LOCAL_PEER_UNKNOWN;
	ci = container_lookup(cgid);
	/* A pod cgroup's entry (no container id) names no container. */
	return ci && ci->container_id ? ci->container_id : LOCAL_PEER_UNKNOWN;
}

/* Probes only the (peer, proto, port prefix) keys that the policy's masks
 * say exist: at most 4 x 17 hash lookups, usually one or two. */
static __always_inline __u8 match_rules(__u32 policy_id, __u8 dir, __u8 local, __u32 peer,
					__u8 proto, __u16 port, __u8 has_ports, __u32 *rule_id)
{
	struct policy_info *pi = bpf_map_lookup_elem(&sw_policies, &policy_id);
	struct rule_key k = { .policy_id = policy_id };
	__u32 allow_id = 0;
	__u8 acc = 0;

	if (!pi)
		return 0;
	for (int combo = 0; combo < 4; combo++) {
		__u32 mask = pi->plens[((__u32)dir * 8 + (__u32)local * 4 + combo) & 15];

		if (!has_ports)
			mask &= 1;
		if (!mask)
			continue;
		k.peer = (combo & 2) ? PEER_ANY : peer;
		k.proto = (combo & 1) ? PROTO_ANY : proto;
		for (int plen = 0; plen < PORT_PLENS; plen++) {
			struct rule_info *r;

			if (!(mask & (1u << plen)))
				continue;
			k.port = plen ? (__u16)(port & ((0xffffu << (16 - plen)) & 0xffff)) : 0;
			k.flags = dir | (local << 1) | (plen << RK_PLEN_SHIFT);
			r = bpf_map_lookup_elem(&sw_rules, &k);
			if (!r)
				continue;
			if (r->action & RA_DENY) {
				*rule_id = r->rule_id;
				return r->action | acc;
			}
			if ((r->action & RA_ALLOW) && !allow_id)
				allow_id = r->rule_id;
			acc |= r->action;
		}
	}
	*rule_id = allow_id;
	return acc;
}

static __always_inline void decide(const struct container_info *ci, __u8 dir, __u8 local,
				   __u32 peer, __u8 proto, __u16 port, __u8 has_ports,
				   struct decision *d)
{
	__u32 rid = 0;
	__u8 a;

	d->policy_id = ci->policy_id;
	d->peer = peer;
	d->local = local;
	if (ci->flags & CF_DENY_ALL) {
		d->verdict = VERDICT_DENY;
		d->reason = REASON_UNCLASSIFIED;
		return;
	}
	/* No boundary inside one container: its loopback traffic to itself passes. */
	if (local && peer == ci->container_id) {
		d->verdict = VERDICT_ALLOW;
		d->reason = REASON_SELF;
		return;
	}
	a = match_rules(ci->policy_id, dir, local, peer, proto, port, has_ports, &rid);
	d->rule_id = rid;
	if (a & RA_DENY) {
		d->verdict = VERDICT_DENY;
		d->reason = (a & RA_EXCLUSIVE) ? REASON_EXCLUSIVE : REASON_RULE_DENY;
	} else if (a & RA_ALLOW) {
		d->verdict = VERDICT_ALLOW;
		d->reason = REASON_RULE_ALLOW;
	} else if (is_restricted(ci, dir)) {
		d->verdict = VERDICT_DENY;
		d->reason = REASON_DEFAULT_DENY;
	} else {
		d->verdict = VERDICT_ALLOW;
		d->reason = REASON_UNRESTRICTED;
	}
	if (d->verdict == VERDICT_DENY && (ci->flags & CF_AUDIT))
		d->verdict = VERDICT_AUDIT;
}

static __always_inline void emit_event(__u8 hook, __u8 dir, __u64 cgid, __u64 policy_cgroup,
				       __u64 cookie, const struct container_info *ci,
				       const struct tuple *t, const struct decision *d, __u8 new_flow)
{
	struct event *e = bpf_ringbuf_reserve(&sw_events, sizeof(*e), 0);

	if (!e) {
		count(COUNTER_EVENTS_LOST);
		return;
	}
	e->timestamp_ns = bpf_ktime_get_ns();
	e->cgroup_id = cgid;
	e->policy_cgroup = policy_cgroup;
	e->socket_cookie = cookie;
	e->policy_id = d->policy_id;
	e->rule_id = d->rule_id;
	e->peer_identity = d->peer;
	e->container_id = ci ? ci->container_id : 0;
	if (!e->container_id) {
		struct container_info *c = container_lookup(policy_cgroup);

		if (c)
			e->container_id = c->container_id;
	}
	__builtin_memcpy(e->saddr, t->saddr, 16);
	__builtin_memcpy(e->daddr, t->daddr, 16);
	e->sport = t->sport;
	e->dport = t->dport;
	e->family = t->family;
	e->proto = t->proto;
	e->direction = dir;
	e->verdict = d->verdict;
	e->reason = d->reason;
	e->hook = hook;
	e->local = d->local;
	e->new_flow = new_flow;
	bpf_ringbuf_submit(e, 0);
}
