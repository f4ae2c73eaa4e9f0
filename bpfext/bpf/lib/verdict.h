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

/* Loopback, or the pod's own address: the socket hooks' view of pod-local,
 * before any route exists. cgroup_skb decides pod-local from where the packet
 * is really delivered instead (delivered_locally in cgroup_skb.c). */
static __always_inline int is_pod_address(__u8 family, const __u8 *addr, __u32 pod_id)
{
	struct pod_info *pod;

	/* 0.0.0.0 and :: as destinations mean this host to the kernel. */
	if (family == 4) {
		if (addr[0] == 127 || *(const __u32 *)addr == 0)
			return 1;
	} else {
		const __u32 *w = (const __u32 *)addr;

		if (w[0] == 0 && w[1] == 0 && w[2] == 0 && (w[3] == bpf_htonl(1) || w[3] == 0))
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

/* Multicast, or IPv4 limited broadcast: a copy is looped back to the pod's
 * own sockets (IP_MULTICAST_LOOP is on by default) as well as sent out. */
static __always_inline int is_multicast_or_broadcast(__u8 family, const __u8 *addr)
{
	if (family == 4)
		return (addr[0] & 0xf0) == 0xe0 || *(const __u32 *)addr == 0xffffffff;
	return addr[0] == 0xff;
}

/* The container holding (proto, port) in the pod by the bound table, with
 * the cgroup of its socket (0 when the port is only reserved). */
static __always_inline struct bound_port *bound_lookup(__u32 pod_id, __u8 proto, __u16 port)
{
	struct local_port_key k = { .pod_id = pod_id, .port = port, .proto = proto };

	return bpf_map_lookup_elem(&sw_bound, &k);
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
 * say exist: at most 4 x 17 hash lookups, usually one or two. A global
 * function: the verifier checks it once, not at every call site (the
 * ingress verdict decides both ends of pod-local traffic). Packed:
 * bit 0 direction, bit 1 pod-local, bit 2 has ports, bits 8-15 protocol,
 * bits 16-31 port. */
__attribute__((noinline)) int sw_match_rules(__u32 policy_id, __u32 peer, __u32 packed, __u32 *rule_id)
{
	__u8 dir = packed & 1, local = (packed >> 1) & 1, has_ports = (packed >> 2) & 1;
	__u8 proto = (packed >> 8) & 0xff;
	__u16 port = packed >> 16;

	struct policy_info *pi = bpf_map_lookup_elem(&sw_policies, &policy_id);
	struct rule_key k = { .policy_id = policy_id };
	__u32 allow_id = 0;
	__u8 acc = 0;

	if (!rule_id)
		return 0;
	*rule_id = 0;
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
	a = sw_match_rules(ci->policy_id, peer,
			   (__u32)(dir & 1) | ((__u32)(local & 1) << 1) | ((__u32)(has_ports & 1) << 2) |
				   ((__u32)proto << 8) | ((__u32)port << 16),
			   &rid);
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

/* toFQDNs: whether an address this container learned from a DNS answer,
 * still unexpired for some selector, is allowed by that selector's rules.
 * A global function, verified once; called only where the decision so far
 * is the default deny of a container with toFQDNs rules, so other traffic
 * never pays for it. */
__attribute__((noinline)) int sw_fqdn_match(__u64 cgid, const struct tuple *t, __u32 policy_id, __u32 packed,
					     __u32 *rule_id)
{
	struct fqdn_key k = {};
	struct fqdn_entry *e;
	__u32 now;

	if (!t || !rule_id)
		return 0;
	*rule_id = 0;
	k.cgroup_id = cgid;
	k.family = t->family;
	__builtin_memcpy(k.addr, t->daddr, 16);
	e = bpf_map_lookup_elem(&sw_fqdn, &k);
	if (!e)
		return 0;
	now = (__u32)(bpf_ktime_get_ns() / 1000000000ULL);
	for (int i = 0; i < FQDN_SELECTORS; i++) {
		__u32 rid = 0;

		if (e->expires[i] <= now)
			continue;
		if (sw_match_rules(policy_id, FQDN_PEER_BASE + i, packed, &rid) & RA_ALLOW) {
			*rule_id = rid;
			return 1;
		}
	}
	return 0;
}

/* Turns a default deny of an egress connection into an allow when the
 * container learned the address for a toFQDNs rule that allows the port. */
static __always_inline __u8 fqdn_decide(const struct container_info *ci, __u64 cgid, const struct tuple *t,
					__u8 dir, struct decision *d)
{
	__u32 rid = 0;

	if (dir != DIR_EGRESS || d->local || d->reason != REASON_DEFAULT_DENY || !(ci->flags & CF_FQDN))
		return 0;
	if (!sw_fqdn_match(cgid, t, ci->policy_id,
			   (__u32)DIR_EGRESS | ((__u32)(t->has_ports & 1) << 2) | ((__u32)t->proto << 8) |
				   ((__u32)t->dport << 16),
			   &rid))
		return 0;
	d->verdict = VERDICT_ALLOW;
	d->reason = REASON_RULE_ALLOW;
	d->rule_id = rid;
	return 1;
}

/* Whether an event may be sent: repeated denies of one flow (of one leaf
 * cgroup) are reported once per config.deny_aggregate_ms, and each container (classified cgroup)
 * has a token bucket per CPU, so one container cannot fill the ring buffer
 * that every pod of the node shares. */
__attribute__((noinline)) int sw_event_admitted(__u64 cgid, __u64 policy_cgroup, const struct tuple *t, __u32 packed,
						 __u64 cookie)
{
	__u8 dir = packed & 1, new_flow = (packed >> 1) & 1, verdict = (packed >> 8) & 0xff, reason = packed >> 16;
	__u32 zero = 0;
	struct config *cfg = bpf_map_lookup_elem(&sw_config, &zero);
	struct event_budget *b;
	__u64 now, cost, cap, credit;

	if (!cfg || !t)
		return 1;
	now = bpf_ktime_get_ns();
	if (!new_flow && verdict != VERDICT_ALLOW && cfg->deny_aggregate_ms) {
		struct flow_key k = {};
		__u64 *last;

		k.cgroup_id = cgid;
		if (dir == DIR_EGRESS) {
			__builtin_memcpy(k.local, t->saddr, 16);
			__builtin_memcpy(k.remote, t->daddr, 16);
			k.lport = t->sport;
			k.rport = t->dport;
		} else {
			__builtin_memcpy(k.local, t->daddr, 16);
			__builtin_memcpy(k.remote, t->saddr, 16);
			k.lport = t->dport;
			k.rport = t->sport;
		}
		k.proto = t->proto;
		k.origin = dir;
		k.family = t->family;
		k.pad = reason;
		/* The socket hooks know no source yet: each socket is its own flow. */
		if (dir == DIR_EGRESS && t->sport == 0)
			__builtin_memcpy(k.local, &cookie, sizeof(cookie));
		last = bpf_map_lookup_elem(&sw_deny_seen, &k);
		if (last && now - *last < (__u64)cfg->deny_aggregate_ms * 1000000ULL) {
			count(COUNTER_EVENTS_AGGREGATED);
			return 0;
		}
		bpf_map_update_elem(&sw_deny_seen, &k, &now, BPF_ANY);
	}
	if (!cfg->event_rate)
		return 1;
	cost = 1000000000ULL / cfg->event_rate;
	cap = cost * (cfg->event_burst ? cfg->event_burst : 1);
	b = bpf_map_lookup_elem(&sw_event_budget, &policy_cgroup);
	if (!b) {
		struct event_budget nb = { .last_ns = now, .credit_ns = cap };

		bpf_map_update_elem(&sw_event_budget, &policy_cgroup, &nb, BPF_NOEXIST);
		b = bpf_map_lookup_elem(&sw_event_budget, &policy_cgroup);
		if (!b)
			return 1;
	}
	credit = b->credit_ns + (now - b->last_ns);
	if (credit > cap)
		credit = cap;
	b->last_ns = now;
	if (credit < cost) {
		b->credit_ns = credit;
		b->dropped++;
		count(COUNTER_EVENTS_RATE_LIMITED);
		return 0;
	}
	b->credit_ns = credit - cost;
	return 1;
}

static __always_inline void emit_event(__u8 hook, __u8 dir, __u64 cgid, __u64 policy_cgroup,
				       __u64 cookie, const struct container_info *ci,
				       const struct tuple *t, const struct decision *d, __u8 new_flow)
{
	struct event *e;

	if (!sw_event_admitted(cgid, policy_cgroup, t,
			       (__u32)(dir & 1) | ((__u32)(new_flow & 1) << 1) | ((__u32)d->verdict << 8) |
				       ((__u32)d->reason << 16),
			       cookie))
		return;
	e = bpf_ringbuf_reserve(&sw_events, sizeof(*e), 0);
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
