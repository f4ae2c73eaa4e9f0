//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)

/* cgroup_skb entry and verdict programs: the authoritative per-packet check.
 * The entry programs attach to a pod cgroup (BPF_F_ALLOW_MULTI), classify
 * the packet by the nearest cgroup the maps know and tail-call the verdict,
 * so the verdict is replaced for every pod by one PROG_ARRAY update. */

#include "lib/common.h"
#include "lib/maps.h"
#include "lib/verdict.h"

/* One array per direction: a PROG_ARRAY only accepts programs of the
 * owner's type and expected attach type. Slot 0 holds the verdict. */
struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(key_size, 4);
	__uint(value_size, 4);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_calls_egress SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(key_size, 4);
	__uint(value_size, 4);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_calls_ingress SEC(".maps");

/* The leaf cgroup, or its nearest ancestor the maps know: a container that
 * creates a child cgroup stays classified as itself. */
static __always_inline __u64 classify_skb(struct __sk_buff *skb, struct container_info **out)
{
	__u64 leaf = bpf_skb_cgroup_id(skb);
	struct container_info *ci = container_lookup(leaf);

	*out = ci;
	if (ci)
		return leaf;
	for (int level = MAX_CGROUP_LEVEL - 1; level >= 0; level--) {
		__u64 id = bpf_skb_ancestor_cgroup_id(skb, level);

		if (!id || id == leaf)
			continue;
		ci = container_lookup(id);
		if (ci) {
			*out = ci;
			return id;
		}
	}
	return 0;
}

static __always_inline int skb_entry(struct __sk_buff *skb, void *calls, __u8 dir)
{
	struct container_info *ci;
	__u64 id = classify_skb(skb, &ci);
	__u32 flags;

	if (!ci) {
		count(COUNTER_UNKNOWN_CGROUP);
		return 1;
	}
	flags = ci->flags;
	skb->cb[CB_CGROUP_LO] = (__u32)id;
	skb->cb[CB_CGROUP_HI] = (__u32)(id >> 32);
	skb->cb[CB_POLICY] = ci->policy_id;
	skb->cb[CB_POD] = ci->pod_id;
	skb->cb[CB_FLAGS] = (flags & 0xffff) | (CB_MAGIC << 16);
	bpf_tail_call(skb, calls, 0);
	/* The slot is empty: never let a restricted container through. */
	if (flags & CF_FAIL_OPEN)
		return 1;
	count_verdict(dir, VERDICT_DENY, REASON_NO_VERDICT);
	return 0;
}

SEC("cgroup_skb/egress")
int sw_entry_egress(struct __sk_buff *skb)
{
	return skb_entry(skb, &sw_calls_egress, DIR_EGRESS);
}

SEC("cgroup_skb/ingress")
int sw_entry_ingress(struct __sk_buff *skb)
{
	return skb_entry(skb, &sw_calls_ingress, DIR_INGRESS);
}

#define IPV6_EXT_MAX 4

/* Fills t from the packet; returns a REASON_* when it cannot be classified. */
static __always_inline __u8 parse_skb(struct __sk_buff *skb, struct tuple *t)
{
	__u8 first;
	__u32 off;
	__u8 proto;

	if (bpf_skb_load_bytes(skb, 0, &first, 1) < 0)
		return REASON_TRUNCATED;
	if ((first >> 4) == 4) {
		struct {
			__u8 vihl, tos;
			__u16 tot_len, id, frag_off;
			__u8 ttl, protocol;
			__u16 check;
			__u32 saddr, daddr;
		} ip4;

		if (bpf_skb_load_bytes(skb, 0, &ip4, sizeof(ip4)) < 0)
			return REASON_TRUNCATED;
		if ((ip4.vihl & 0xf) < 5)
			return REASON_MALFORMED;
		t->family = 4;
		*(__u32 *)t->saddr = ip4.saddr;
		*(__u32 *)t->daddr = ip4.daddr;
		proto = ip4.protocol;
		t->proto = proto;
		if (bpf_ntohs(ip4.frag_off) & 0x1fff)
			return REASON_FRAGMENT;
		off = (ip4.vihl & 0xf) * 4;
	} else if ((first >> 4) == 6) {
		struct {
			__u32 vtcfl;
			__u16 plen;
			__u8 nexthdr, hop;
			__u8 saddr[16], daddr[16];
		} ip6;

		if (bpf_skb_load_bytes(skb, 0, &ip6, sizeof(ip6)) < 0)
			return REASON_TRUNCATED;
		t->family = 6;
		__builtin_memcpy(t->saddr, ip6.saddr, 16);
		__builtin_memcpy(t->daddr, ip6.daddr, 16);
		proto = ip6.nexthdr;
		off = sizeof(ip6);
		for (int i = 0; i < IPV6_EXT_MAX; i++) {
			struct {
				__u8 nexthdr, len;
				__u16 frag_off;
			} ext;

			if (proto != 0 && proto != 43 && proto != 60 && proto != 44 && proto != 51)
				break;
			if (bpf_skb_load_bytes(skb, off, &ext, sizeof(ext)) < 0)
				return REASON_TRUNCATED;
			if (proto == 44) {
				if (bpf_ntohs(ext.frag_off) & 0xfff8)
					return REASON_FRAGMENT;
				off += 8;
			} else if (proto == 51) {
				off += ((__u32)ext.len + 2) * 4;
			} else {
				off += ((__u32)ext.len + 1) * 8;
			}
			proto = ext.nexthdr;
		}
		t->proto = proto;
	} else {
		return REASON_MALFORMED;
	}

	switch (proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_SCTP: {
		__u16 ports[2];

		if (bpf_skb_load_bytes(skb, off, ports, sizeof(ports)) < 0)
			return REASON_TRUNCATED;
		t->sport = bpf_ntohs(ports[0]);
		t->dport = bpf_ntohs(ports[1]);
		t->has_ports = 1;
		return REASON_NONE;
	}
	case IPPROTO_ICMP:
	case IPPROTO_ICMPV6_: {
		__u8 type_code[2];

		if ((proto == IPPROTO_ICMP) != (t->family == 4))
			return REASON_UNKNOWN_L4;
		if (bpf_skb_load_bytes(skb, off, type_code, sizeof(type_code)) < 0)
			return REASON_TRUNCATED;
		return REASON_NONE;
	}
	}
	return REASON_UNKNOWN_L4;
}

/* Where the packet is really delivered. On egress, a packet leaves through
 * the namespace's loopback device exactly when its route is local: any
 * address of the pod's network namespace (loopback, every pod IP, link-local
 * addresses of every interface). On ingress, it arrived on loopback, or it
 * is the looped-back copy of the pod's own multicast or broadcast. */
static __always_inline int delivered_locally(struct __sk_buff *skb, __u8 dir)
{
	if (dir == DIR_EGRESS)
		return skb->ifindex == LOOPBACK_IFINDEX;
	return skb->ingress_ifindex == LOOPBACK_IFINDEX || skb->pkt_type == PACKET_LOOPBACK;
}

/* The classified cgroup of the socket at the pod-local other end, found
 * the way the kernel finds it: on egress the socket the packet will be
 * delivered to, on ingress the socket that sent it. 0 when no socket, or
 * none in a classified cgroup, holds it. */
__attribute__((noinline)) __u64 sw_local_peer_cgroup(struct __sk_buff *skb, const struct tuple *t, __u32 dir)
{
	struct bpf_sock_tuple st = {};
	struct bpf_sock *sk;
	__u64 leaf, found = 0;
	__u32 size;

	if (!t || !t->has_ports)
		return 0;
	if (t->family == 4) {
		st.ipv4.saddr = *(const __u32 *)(dir == DIR_EGRESS ? t->saddr : t->daddr);
		st.ipv4.daddr = *(const __u32 *)(dir == DIR_EGRESS ? t->daddr : t->saddr);
		size = sizeof(st.ipv4);
	} else {
		__builtin_memcpy(st.ipv6.saddr, dir == DIR_EGRESS ? t->saddr : t->daddr, 16);
		__builtin_memcpy(st.ipv6.daddr, dir == DIR_EGRESS ? t->daddr : t->saddr, 16);
		size = sizeof(st.ipv6);
	}
	/* sport/dport sit at the same offsets in both halves of the union. */
	if (t->family == 4) {
		st.ipv4.sport = bpf_htons(dir == DIR_EGRESS ? t->sport : t->dport);
		st.ipv4.dport = bpf_htons(dir == DIR_EGRESS ? t->dport : t->sport);
	} else {
		st.ipv6.sport = bpf_htons(dir == DIR_EGRESS ? t->sport : t->dport);
		st.ipv6.dport = bpf_htons(dir == DIR_EGRESS ? t->dport : t->sport);
	}
	if (t->proto == IPPROTO_TCP)
		sk = bpf_sk_lookup_tcp(skb, &st, size, BPF_F_CURRENT_NETNS, 0);
	else if (t->proto == IPPROTO_UDP)
		sk = bpf_sk_lookup_udp(skb, &st, size, BPF_F_CURRENT_NETNS, 0);
	else
		return 0;
	if (!sk)
		return 0;
	leaf = bpf_sk_cgroup_id(sk);
	if (container_lookup(leaf)) {
		found = leaf;
	} else {
		for (int level = MAX_CGROUP_LEVEL - 1; level >= 0; level--) {
			__u64 id = bpf_sk_ancestor_cgroup_id(sk, level);

			if (!id || id == leaf)
				continue;
			if (container_lookup(id)) {
				found = id;
				break;
			}
		}
	}
	bpf_sk_release(sk);
	return found;
}

static __always_inline void flow_key_of(struct flow_key *k, __u64 cgid, const struct tuple *t,
					__u8 dir, __u8 origin)
{
	k->cgroup_id = cgid;
	if (dir == DIR_EGRESS) {
		__builtin_memcpy(k->local, t->saddr, 16);
		__builtin_memcpy(k->remote, t->daddr, 16);
		k->lport = t->sport;
		k->rport = t->dport;
	} else {
		__builtin_memcpy(k->local, t->daddr, 16);
		__builtin_memcpy(k->remote, t->saddr, 16);
		k->lport = t->dport;
		k->rport = t->sport;
	}
	k->proto = t->proto;
	k->origin = origin;
	k->family = t->family;
	k->pad = 0;
}

/* A packet of a socket that connect/sendmsg redirected to the pod's DNS
 * proxy (127.0.0.1 or ::1 on the proxy's port): records, by its source
 * port, which container sent it and to which server, so that the proxy
 * knows both before it can read the query. Returns 1 for such a packet; a
 * packet to the proxy's port from a socket that was not redirected is left
 * to the verdict, which denies it as pod-local traffic to no container. */
static __always_inline int dns_to_proxy(struct __sk_buff *skb, const struct container_info *ci, __u64 cgid,
					const struct tuple *t)
{
	struct dns_pending_key pk = {};
	struct dns_pending pv = {};
	struct flow_key fk;
	struct flow_info fi = {};
	struct dns_proxy *p;
	struct dns_orig *o;
	struct bpf_sock *sk;

	if (!t->has_ports)
		return 0;
	if (t->family == 4) {
		if (*(const __u32 *)t->daddr != bpf_htonl(0x7f000001))
			return 0;
	} else {
		const __u32 *w = (const __u32 *)t->daddr;

		if (w[0] || w[1] || w[2] || w[3] != bpf_htonl(1))
			return 0;
	}
	p = bpf_map_lookup_elem(&sw_dns_proxy, &ci->pod_id);
	if (!p || !p->port || t->dport != p->port)
		return 0;
	sk = skb->sk;
	if (!sk)
		return 0;
	sk = bpf_sk_fullsock(sk);
	if (!sk)
		return 0;
	o = bpf_sk_storage_get(&sw_dns_orig, sk, 0, 0);
	if (!o || !o->valid)
		return 0;
	pk.pod_id = ci->pod_id;
	pk.port = t->sport;
	pk.proto = t->proto;
	pv.cgroup_id = cgid;
	__builtin_memcpy(pv.addr, o->addr, 16);
	pv.port = o->port;
	pv.family = o->family;
	pv.rule_id = o->rule_id;
	bpf_map_update_elem(&sw_dns_pending, &pk, &pv, BPF_ANY);
	/* The proxy's answers are replies of this flow. */
	flow_key_of(&fk, cgid, t, DIR_EGRESS, DIR_EGRESS);
	fi.first_seen_ns = bpf_ktime_get_ns();
	fi.policy_id = ci->policy_id;
	fi.flags = FLOW_LOCAL;
	bpf_map_update_elem(&sw_flows, &fk, &fi, BPF_NOEXIST);
	return 1;
}

static __always_inline void remember(struct verdict_cache *cache, __u8 dir, __u64 epoch,
				     const struct flow_key *fk, __u8 reason)
{
	struct verdict_cache_entry *ce;

	if (!cache || !epoch)
		return;
	ce = &cache->dir[dir & 1];
	ce->epoch = epoch;
	ce->cgroup_id = fk->cgroup_id;
	__builtin_memcpy(ce->remote, fk->remote, 16);
	ce->lport = fk->lport;
	ce->rport = fk->rport;
	ce->proto = fk->proto;
	ce->family = fk->family;
	ce->reason = reason;
	ce->valid = 1;
}

static __always_inline int skb_verdict(struct __sk_buff *skb, __u8 dir)
{
	struct container_info ci, *cip;
	struct decision d = {};
	struct tuple t = {};
	struct verdict_cache *cache;
	struct flow_key fk;
	__u64 cgid, peer_cg = 0, epoch = 0;
	__u8 reason, local, fqdn;
	__u32 peer;

	if ((skb->cb[CB_FLAGS] >> 16) == CB_MAGIC) {
		__u32 lo = skb->cb[CB_CGROUP_LO], hi = skb->cb[CB_CGROUP_HI];
		__u32 pol = skb->cb[CB_POLICY], pod = skb->cb[CB_POD], fl = skb->cb[CB_FLAGS];

		/* Keep clang from merging these ctx loads with the map value copy
		 * below into one pointer the verifier would reject. */
		asm volatile("" : "+r"(lo), "+r"(hi), "+r"(pol), "+r"(pod), "+r"(fl));
		cgid = lo | ((__u64)hi << 32);
		ci.policy_id = pol;
		ci.pod_id = pod;
		ci.flags = fl & 0xffff;
		/* Needed only for pod-local traffic and events: looked up there. */
		ci.container_id = 0;
	} else {
		cgid = classify_skb(skb, &cip);
		if (!cip)
			return 1;
		ci = *cip;
	}

	reason = parse_skb(skb, &t);
	if (reason != REASON_NONE) {
		d.policy_id = ci.policy_id;
		d.reason = reason;
		if (is_restricted(&ci, dir) || (ci.flags & CF_DENY_ALL)) {
			d.verdict = VERDICT_DENY;
			if (ci.flags & CF_AUDIT)
				d.verdict = VERDICT_AUDIT;
		} else {
			d.verdict = VERDICT_ALLOW;
		}
		count_verdict(dir, d.verdict, reason);
		if (d.verdict != VERDICT_ALLOW)
			emit_event(HOOK_SKB, dir, bpf_skb_cgroup_id(skb), cgid, bpf_get_socket_cookie(skb),
				   &ci, &t, &d, 0);
		return d.verdict != VERDICT_DENY;
	}

	/* A redirected DNS query on its way to the pod's DNS proxy. */
	if (dir == DIR_EGRESS && (ci.flags & CF_FQDN) && dns_to_proxy(skb, &ci, cgid, &t)) {
		count_verdict(dir, VERDICT_ALLOW, REASON_RULE_ALLOW);
		return 1;
	}

	/* Fast path: this socket's last allowed verdict for the same peer,
	 * ports and classification, in the current epoch. */
	{
		__u32 zero = 0;
		struct config *cfg = bpf_map_lookup_elem(&sw_config, &zero);
		struct bpf_sock *sk = skb->sk;

		cache = 0;
		if (cfg && !(cfg->flags & CONFIG_NO_SOCKET_CACHE) && sk) {
			sk = bpf_sk_fullsock(sk);
			if (sk)
				cache = bpf_sk_storage_get(&sw_sock_cache, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		}
		if (cache && cfg) {
			struct verdict_cache_entry *ce = &cache->dir[dir & 1];
			const __u32 *r = (const __u32 *)(dir == DIR_EGRESS ? t.daddr : t.saddr);
			const __u32 *c = (const __u32 *)ce->remote;

			epoch = cfg->epoch;
			if (ce->valid && ce->epoch == epoch && ce->cgroup_id == cgid && ce->proto == t.proto &&
			    ce->family == t.family && ce->lport == (dir == DIR_EGRESS ? t.sport : t.dport) &&
			    ce->rport == (dir == DIR_EGRESS ? t.dport : t.sport) &&
			    c[0] == r[0] && c[1] == r[1] && c[2] == r[2] && c[3] == r[3]) {
				count_verdict(dir, VERDICT_ALLOW, ce->reason);
				return 1;
			}
		}
	}

	local = delivered_locally(skb, dir);
	if (local) {
		if (!ci.container_id) {
			cip = container_lookup(cgid);
			if (cip)
				ci.container_id = cip->container_id;
		}
		peer_cg = sw_local_peer_cgroup(skb, &t, dir);
		peer = local_container_id(peer_cg);
	} else {
		peer = resolve_identity(t.family, dir == DIR_EGRESS ? t.daddr : t.saddr);
	}

	/* Rules name the destination port in both directions, as in Cilium. */
	decide(&ci, dir, local, peer, t.proto, t.dport, t.has_ports, &d);
	fqdn = fqdn_decide(&ci, cgid, &t, dir, &d);

	/* The flow this packet opens, or continues. Established flows cost one
	 * lookup on the side that opened them. */
	flow_key_of(&fk, cgid, &t, dir, dir);
	/* A connection opened to an address learned for toFQDNs outlives the
	 * answer, as in Cilium. */
	if (d.reason == REASON_DEFAULT_DENY && (ci.flags & CF_FQDN) && dir == DIR_EGRESS && !local) {
		struct flow_info *ffi = bpf_map_lookup_elem(&sw_flows, &fk);

		if (ffi && (ffi->flags & FLOW_FQDN)) {
			count_verdict(dir, VERDICT_ALLOW, REASON_RULE_ALLOW);
			remember(cache, dir, epoch, &fk, REASON_RULE_ALLOW);
			return 1;
		}
	}
	if ((d.verdict != VERDICT_DENY || (local && peer == LOCAL_PEER_UNKNOWN && !(ci.flags & CF_DENY_ALL))) &&
	    bpf_map_lookup_elem(&sw_flows, &fk)) {
		/* A pod-local flow whose other end is gone (no socket holds it)
		 * may finish: nothing can receive it. */
		count_verdict(dir, d.verdict, d.reason);
		if (d.verdict == VERDICT_AUDIT)
			emit_event(HOOK_SKB, dir, bpf_skb_cgroup_id(skb), cgid, bpf_get_socket_cookie(skb),
				   &ci, &t, &d, 0);
		else
			remember(cache, dir, epoch, &fk, d.reason);
		return 1;
	}
	/* Replies of a flow allowed the other way pass, as in Cilium. */
	fk.origin = !dir;
	if (!(ci.flags & CF_DENY_ALL) && bpf_map_lookup_elem(&sw_flows, &fk)) {
		count_verdict(dir, VERDICT_ALLOW, REASON_REPLY);
		remember(cache, dir, epoch, &fk, REASON_REPLY);
		return 1;
	}
	fk.origin = dir;

	count_verdict(dir, d.verdict, d.reason);
	if (d.verdict == VERDICT_DENY) {
		emit_event(HOOK_SKB, dir, bpf_skb_cgroup_id(skb), cgid, bpf_get_socket_cookie(skb), &ci, &t, &d, 0);
		return 0;
	}

	/* Pod-local, arriving: the sender's egress rules decide too, unless its
	 * own egress already decided this flow as pod-local. That covers what
	 * the sender's egress saw as outbound: the looped-back copies of its
	 * multicast and broadcast. */
	if (local && dir == DIR_INGRESS && peer_cg && peer_cg != cgid) {
		struct container_info *sp = container_lookup(peer_cg);

		if (sp) {
			struct flow_key sk_fk;
			struct flow_info *sfi;

			flow_key_of(&sk_fk, peer_cg, &t, DIR_EGRESS, DIR_EGRESS);
			sfi = bpf_map_lookup_elem(&sw_flows, &sk_fk);
			if (!sfi || !(sfi->flags & FLOW_LOCAL)) {
				struct container_info s = *sp;
				struct decision sd = {};

				decide(&s, DIR_EGRESS, 1, ci.container_id ? ci.container_id : LOCAL_PEER_UNKNOWN,
				       t.proto, t.dport, t.has_ports, &sd);
				if (sd.verdict == VERDICT_DENY) {
					count_verdict(DIR_EGRESS, sd.verdict, sd.reason);
					emit_event(HOOK_SKB, DIR_EGRESS, peer_cg, peer_cg, bpf_get_socket_cookie(skb), &s, &t,
						   &sd, 0);
					return 0;
				}
			}
		}
	}

	{
		struct flow_info fi = { .first_seen_ns = bpf_ktime_get_ns(), .policy_id = ci.policy_id,
					.flags = (local ? FLOW_LOCAL : 0) | (fqdn ? FLOW_FQDN : 0) };

		/* NOEXIST: of two CPUs racing on a flow's first packets, one reports it. */
		if (bpf_map_update_elem(&sw_flows, &fk, &fi, BPF_NOEXIST) == 0) {
			emit_event(HOOK_SKB, dir, bpf_skb_cgroup_id(skb), cgid, bpf_get_socket_cookie(skb),
				   &ci, &t, &d, 1);
			if (d.verdict == VERDICT_ALLOW)
				remember(cache, dir, epoch, &fk, d.reason);
			return 1;
		}
	}
	if (d.verdict == VERDICT_AUDIT)
		emit_event(HOOK_SKB, dir, bpf_skb_cgroup_id(skb), cgid, bpf_get_socket_cookie(skb), &ci, &t, &d, 0);
	else
		remember(cache, dir, epoch, &fk, d.reason);
	return 1;
}

SEC("cgroup_skb/egress")
int sw_verdict_egress(struct __sk_buff *skb)
{
	return skb_verdict(skb, DIR_EGRESS);
}

SEC("cgroup_skb/ingress")
int sw_verdict_ingress(struct __sk_buff *skb)
{
	return skb_verdict(skb, DIR_INGRESS);
}

/* Keeps struct event in BTF so bpf2go -type can mirror it in Go. */
const struct event *unused_event __attribute__((unused));

CONTRACT_TYPES

char __license[] SEC("license") = "Dual BSD/GPL";
