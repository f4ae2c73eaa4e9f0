//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)

/* cgroup/connect4|6 and cgroup/sendmsg4|6: the same verdict, decided at the
 * socket call so a denied connect() fails at once with EPERM instead of
 * timing out on silently dropped SYNs. They see the address the application
 * asked for (a service VIP, before any socket load balancer that runs after
 * them); cgroup_skb stays the authoritative check on the wire address.
 * cgroup/post_bind4|6 record which container holds a port of the pod, for
 * binds that succeeded, and refuse a restricted container a port another
 * container holds or declares; cgroup/sock_release releases it. */

#include "lib/common.h"
#include "lib/maps.h"
#include "lib/verdict.h"

/* One PROG_ARRAY per attach type (the kernel ties an array to its owner's
 * expected attach type). Slot 0 holds the verdict. */
#define CALLS(name)                                       \
	struct {                                          \
		__uint(type, BPF_MAP_TYPE_PROG_ARRAY);    \
		__uint(key_size, 4);                      \
		__uint(value_size, 4);                    \
		__uint(max_entries, 1);                   \
		__uint(pinning, LIBBPF_PIN_BY_NAME);      \
	} name SEC(".maps")

CALLS(sw_calls_connect4);
CALLS(sw_calls_connect6);
CALLS(sw_calls_sendmsg4);
CALLS(sw_calls_sendmsg6);

/* The kernel's own structs, as far as a socket's cgroup id: read through
 * BTF (CO-RE), since the socket hooks may not call bpf_sk_cgroup_id. */
struct kernfs_node {
	__u64 id;
} __attribute__((preserve_access_index));

struct cgroup {
	struct kernfs_node *kn;
} __attribute__((preserve_access_index));

struct sock_cgroup_data {
	struct cgroup *cgroup;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_cgroup_data sk_cgrp_data;
} __attribute__((preserve_access_index));

/* The cgroup id of a TCP socket found by bpf_sk_lookup_tcp, 0 if unknown. */
static __always_inline __u64 sk_cgroup_id_core(struct bpf_sock *bs)
{
	struct sock *sk = (struct sock *)bpf_skc_to_tcp_sock(bs);
	struct cgroup *cg;
	struct kernfs_node *kn;

	if (!sk)
		return 0;
	cg = sk->sk_cgrp_data.cgroup;
	if (!cg)
		return 0;
	kn = cg->kn;
	if (!kn)
		return 0;
	return kn->id;
}

static __always_inline __u64 classify_current(struct container_info **out)
{
	__u64 leaf = bpf_get_current_cgroup_id();
	struct container_info *ci = container_lookup(leaf);

	*out = ci;
	if (ci)
		return leaf;
	for (int level = MAX_CGROUP_LEVEL - 1; level >= 0; level--) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);

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

static __always_inline int sock_entry(struct bpf_sock_addr *ctx, void *calls)
{
	struct container_info *ci;
	__u32 flags;

	classify_current(&ci);
	if (!ci)
		return 1;
	flags = ci->flags;
	bpf_tail_call(ctx, calls, 0);
	if (flags & CF_FAIL_OPEN)
		return 1;
	count_verdict(DIR_EGRESS, VERDICT_DENY, REASON_NO_VERDICT);
	return 0;
}

/* user_ip6 takes only 4-byte stores: the barriers keep clang from merging
 * two of them into one 8-byte store the verifier refuses. */
static __always_inline void set_user_ip6(struct bpf_sock_addr *ctx, __u32 w0, __u32 w1, __u32 w2, __u32 w3)
{
	ctx->user_ip6[0] = w0;
	asm volatile("" ::: "memory");
	ctx->user_ip6[1] = w1;
	asm volatile("" ::: "memory");
	ctx->user_ip6[2] = w2;
	asm volatile("" ::: "memory");
	ctx->user_ip6[3] = w3;
}

/* A container with toFQDNs rules sends DNS to a server its rules allow:
 * the query goes to the agent's proxy on the pod's loopback instead, which
 * forwards it to that server and writes what the answer teaches into
 * sw_fqdn before the container can read the answer. The socket remembers
 * the server, for the proxy (through sw_dns_pending) and for recvmsg. */
static __always_inline void dns_redirect(struct bpf_sock_addr *ctx, __u8 hook_family,
					 const struct container_info *ci, const struct tuple *t,
					 const struct decision *d)
{
	struct dns_proxy *p = bpf_map_lookup_elem(&sw_dns_proxy, &ci->pod_id);
	struct bpf_sock *sk = ctx->sk;
	struct dns_orig *o;

	if (!p || !p->port || !sk)
		return;
	if (t->family == 6 && !p->v6)
		return;
	o = bpf_sk_storage_get(&sw_dns_orig, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!o)
		return;
	__builtin_memcpy(o->addr, t->daddr, 16);
	o->port = t->dport;
	o->proxy_port = p->port;
	o->family = t->family;
	o->rule_id = d->rule_id;
	o->valid = 1;
	if (hook_family == 4) {
		ctx->user_ip4 = bpf_htonl(0x7f000001);
	} else if (t->family == 4) {
		/* A dual-stack socket: stay IPv4 on the wire. */
		set_user_ip6(ctx, 0, 0, bpf_htonl(0xffff), bpf_htonl(0x7f000001));
	} else {
		set_user_ip6(ctx, 0, 0, 0, bpf_htonl(1));
	}
	ctx->user_port = bpf_htons(p->port);
}

static __always_inline int sock_verdict(struct bpf_sock_addr *ctx, __u8 family, __u8 hook)
{
	struct container_info ci, *cip;
	struct decision d = {};
	struct tuple t = {};
	__u64 cgid, leaf, cookie, owner = 0;
	__u32 peer;
	__u8 local;

	cgid = classify_current(&cip);
	if (!cip)
		return 1;
	ci = *cip;
	t.proto = ctx->protocol;
	/* Other protocols (ping sockets, raw) are left to cgroup_skb. */
	if (t.proto != IPPROTO_TCP && t.proto != IPPROTO_UDP)
		return 1;
	t.family = family;
	t.has_ports = 1;
	t.dport = bpf_ntohs((__u16)ctx->user_port);
	if (family == 4) {
		*(__u32 *)t.daddr = ctx->user_ip4;
	} else {
		__u32 *w = (__u32 *)t.daddr;

		w[0] = ctx->user_ip6[0];
		w[1] = ctx->user_ip6[1];
		w[2] = ctx->user_ip6[2];
		w[3] = ctx->user_ip6[3];
		/* A dual-stack socket reaching an IPv4 peer (::ffff:a.b.c.d) sends
		 * IPv4 on the wire: decide it as IPv4, as cgroup_skb will. */
		if (w[0] == 0 && w[1] == 0 && w[2] == bpf_htonl(0xffff)) {
			w[0] = w[3];
			w[1] = w[2] = w[3] = 0;
			t.family = 4;
		}
	}
	leaf = bpf_get_current_cgroup_id();
	cookie = bpf_get_socket_cookie(ctx);

	local = is_pod_address(t.family, t.daddr, ci.pod_id);
	if (local) {
		struct bound_port *bp = bound_lookup(ci.pod_id, t.proto, t.dport);

		if (bp && bp->sockets && bp->cgroup_id) {
			owner = bp->cgroup_id;
			peer = bp->container_id ? bp->container_id : local_container_id(owner);
		} else if (t.proto == IPPROTO_TCP && t.family == 4) {
			/* A listener bound before the pod was attached has no entry:
			 * find it as the kernel will, and read its cgroup. */
			struct bpf_sock_tuple st = {};
			struct bpf_sock *sk;

			st.ipv4.daddr = *(__u32 *)t.daddr;
			st.ipv4.dport = bpf_htons(t.dport);
			sk = bpf_sk_lookup_tcp(ctx, &st, sizeof(st.ipv4), BPF_F_CURRENT_NETNS, 0);
			if (!sk)
				return 1;
			owner = sk_cgroup_id_core(sk);
			bpf_sk_release(sk);
			if (!owner || !container_lookup(owner))
				return 1;
			peer = local_container_id(owner);
		} else if (t.proto == IPPROTO_TCP) {
			struct bpf_sock_tuple st = {};
			struct bpf_sock *sk;

			__builtin_memcpy(st.ipv6.daddr, t.daddr, 16);
			st.ipv6.dport = bpf_htons(t.dport);
			sk = bpf_sk_lookup_tcp(ctx, &st, sizeof(st.ipv6), BPF_F_CURRENT_NETNS, 0);
			if (!sk)
				return 1;
			owner = sk_cgroup_id_core(sk);
			bpf_sk_release(sk);
			if (!owner || !container_lookup(owner))
				return 1;
			peer = local_container_id(owner);
		} else {
			/* No socket of the pod is known to hold the port: cgroup_skb
			 * decides by the socket the packet is really delivered to. */
			return 1;
		}
	} else {
		peer = resolve_identity(t.family, t.daddr);
	}
	decide(&ci, DIR_EGRESS, local, peer, t.proto, t.dport, 1, &d);
	fqdn_decide(&ci, cgid, &t, DIR_EGRESS, &d);
	/* A TCP connect from a container the agent has not classified yet
	 * (the process sits below the pod cgroup's deny-all entry) is let
	 * through to cgroup_skb, which drops its SYN: the kernel retransmits
	 * it, and the connection succeeds once the container is classified,
	 * instead of failing at once with EPERM (a sidecar that connects at
	 * start would crash-loop). Still fail closed: nothing leaves the pod. */
	if (d.verdict == VERDICT_DENY && d.reason == REASON_UNCLASSIFIED &&
	    t.proto == IPPROTO_TCP && cgid != leaf)
		return 1;
	/* Counted as the packet verdicts are (same index), so a connect denied
	 * with EPERM, which never sends a packet, shows in the counters too. */
	count_verdict(DIR_EGRESS, d.verdict, d.reason);
	if (d.verdict != VERDICT_ALLOW) {
		emit_event(hook, DIR_EGRESS, leaf, cgid, cookie, &ci, &t, &d, 0);
		if (d.verdict == VERDICT_DENY)
			return 0;
	}

	if (!local && t.dport == DNS_PORT && (ci.flags & CF_FQDN))
		dns_redirect(ctx, family, &ci, &t, &d);

	/* Pod-local: the receiving container's ingress rules decide too, so a
	 * connect they would drop fails now rather than after retries. */
	if (local && owner) {
		struct container_info *rcv = container_lookup(owner);
		struct decision rd = {};

		if (rcv && rcv->container_id != ci.container_id) {
			struct container_info r = *rcv;

			decide(&r, DIR_INGRESS, 1, ci.container_id, t.proto, t.dport, 1, &rd);
			count_verdict(DIR_INGRESS, rd.verdict, rd.reason);
			if (rd.verdict != VERDICT_ALLOW) {
				emit_event(hook, DIR_INGRESS, owner, owner, cookie, &r, &t, &rd, 0);
				if (rd.verdict == VERDICT_DENY)
					return 0;
			}
		}
	}
	return 1;
}

SEC("cgroup/connect4")
int sw_entry_connect4(struct bpf_sock_addr *ctx)
{
	return sock_entry(ctx, &sw_calls_connect4);
}

SEC("cgroup/connect4")
int sw_verdict_connect4(struct bpf_sock_addr *ctx)
{
	return sock_verdict(ctx, 4, HOOK_CONNECT);
}

SEC("cgroup/connect6")
int sw_entry_connect6(struct bpf_sock_addr *ctx)
{
	return sock_entry(ctx, &sw_calls_connect6);
}

SEC("cgroup/connect6")
int sw_verdict_connect6(struct bpf_sock_addr *ctx)
{
	return sock_verdict(ctx, 6, HOOK_CONNECT);
}

SEC("cgroup/sendmsg4")
int sw_entry_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_entry(ctx, &sw_calls_sendmsg4);
}

SEC("cgroup/sendmsg4")
int sw_verdict_sendmsg4(struct bpf_sock_addr *ctx)
{
	return sock_verdict(ctx, 4, HOOK_SENDMSG);
}

SEC("cgroup/sendmsg6")
int sw_entry_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock_entry(ctx, &sw_calls_sendmsg6);
}

SEC("cgroup/sendmsg6")
int sw_verdict_sendmsg6(struct bpf_sock_addr *ctx)
{
	return sock_verdict(ctx, 6, HOOK_SENDMSG);
}

/* The answer of a redirected DNS socket reads as sent by the server the
 * container asked, as resolvers check (glibc, musl): the proxy's loopback
 * address becomes the original one again. */
SEC("cgroup/recvmsg4")
int sw_recvmsg4(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct dns_orig *o;

	if (!sk)
		return 1;
	o = bpf_sk_storage_get(&sw_dns_orig, sk, 0, 0);
	if (!o || !o->valid || o->family != 4)
		return 1;
	if (ctx->user_ip4 != bpf_htonl(0x7f000001) || ctx->user_port != bpf_htons(o->proxy_port))
		return 1;
	ctx->user_ip4 = *(__u32 *)o->addr;
	ctx->user_port = bpf_htons(o->port);
	return 1;
}

SEC("cgroup/recvmsg6")
int sw_recvmsg6(struct bpf_sock_addr *ctx)
{
	struct bpf_sock *sk = ctx->sk;
	struct dns_orig *o;
	__u32 w0, w1, w2, w3;

	if (!sk)
		return 1;
	o = bpf_sk_storage_get(&sw_dns_orig, sk, 0, 0);
	if (!o || !o->valid)
		return 1;
	if (ctx->user_port != bpf_htons(o->proxy_port))
		return 1;
	w0 = ctx->user_ip6[0];
	w1 = ctx->user_ip6[1];
	w2 = ctx->user_ip6[2];
	w3 = ctx->user_ip6[3];
	if (o->family == 4) {
		if (w0 || w1 || w2 != bpf_htonl(0xffff) || w3 != bpf_htonl(0x7f000001))
			return 1;
		ctx->user_ip6[3] = *(__u32 *)o->addr;
	} else {
		if (w0 || w1 || w2 || w3 != bpf_htonl(1))
			return 1;
		set_user_ip6(ctx, *(__u32 *)&o->addr[0], *(__u32 *)&o->addr[4], *(__u32 *)&o->addr[8],
			     *(__u32 *)&o->addr[12]);
	}
	ctx->user_port = bpf_htons(o->port);
	return 1;
}

static __always_inline int bind_restricted(const struct container_info *ci)
{
	return (ci->flags & (CF_EGRESS_RESTRICTED | CF_INGRESS_RESTRICTED)) != 0;
}

/* Refuses a bind (post_bind returning 0 makes bind() fail with EPERM and
 * releases the port), or only reports it in audit mode. */
static __always_inline int bind_refuse(struct bpf_sock *sk, __u8 family, const struct container_info *ci,
				       __u64 leaf, __u64 cgid, __u32 owner, __u8 reason)
{
	struct decision d = {};
	struct tuple t = {};

	t.family = family;
	t.proto = sk->protocol;
	t.has_ports = 1;
	t.dport = sk->src_port;
	if (family == 4) {
		*(__u32 *)t.daddr = sk->src_ip4;
	} else {
		__u32 *w = (__u32 *)t.daddr;

		w[0] = sk->src_ip6[0];
		w[1] = sk->src_ip6[1];
		w[2] = sk->src_ip6[2];
		w[3] = sk->src_ip6[3];
	}
	d.policy_id = ci->policy_id;
	d.peer = owner;
	d.local = 1;
	d.reason = reason;
	d.verdict = (ci->flags & CF_AUDIT) ? VERDICT_AUDIT : VERDICT_DENY;
	count_verdict(DIR_INGRESS, d.verdict, reason);
	emit_event(HOOK_BIND, DIR_INGRESS, leaf, cgid, bpf_get_socket_cookie(sk), ci, &t, &d, 0);
	return d.verdict != VERDICT_DENY;
}

static __always_inline void bind_remember(struct bpf_sock *sk, const struct local_port_key *k)
{
	struct sock_bound *sb = bpf_sk_storage_get(&sw_sock_bound, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (sb)
		sb->key = *k;
}

/* A bind that succeeded: record the port for its container, unless another
 * container holds it. A restricted container may not take a port another
 * container of the pod holds or declares (nor join its SO_REUSEPORT group),
 * and no container may join a restricted container's port. */
static __always_inline int post_bind(struct bpf_sock *sk, __u8 family)
{
	struct container_info ci, *cip;
	struct local_port_key k = {};
	struct bound_port *bp;
	struct pod_ports *pp;
	struct config *cfg;
	__u64 leaf, cgid;
	__u32 zero = 0;
	int restricted;

	cgid = classify_current(&cip);
	if (!cip)
		return 1;
	ci = *cip;
	leaf = bpf_get_current_cgroup_id();
	k.pod_id = ci.pod_id;
	k.port = sk->src_port;
	k.proto = sk->protocol;
	if (!k.port)
		return 1;
	restricted = bind_restricted(&ci);

	bp = bpf_map_lookup_elem(&sw_bound, &k);
	if (bp) {
		__u32 owner = bp->container_id ? bp->container_id : local_container_id(bp->cgroup_id);
		int mine = (bp->cgroup_id && bp->cgroup_id == leaf) ||
			   (ci.container_id && owner == ci.container_id);

		if (!mine && (restricted || ((bp->flags & BP_RESTRICTED) && bp->sockets)))
			return bind_refuse(sk, family, &ci, leaf, cgid, owner, REASON_PORT_TAKEN);
		if (mine) {
			__sync_fetch_and_add(&bp->sockets, 1);
			if (!bp->cgroup_id)
				bp->cgroup_id = leaf;
			bind_remember(sk, &k);
		}
		return 1;
	}

	/* A new entry, within the pod's share of the table. */
	pp = bpf_map_lookup_elem(&sw_pod_ports, &k.pod_id);
	if (!pp) {
		struct pod_ports np = {};

		bpf_map_update_elem(&sw_pod_ports, &k.pod_id, &np, BPF_NOEXIST);
		pp = bpf_map_lookup_elem(&sw_pod_ports, &k.pod_id);
	}
	cfg = bpf_map_lookup_elem(&sw_config, &zero);
	if (!pp || pp->overflow || (cfg && cfg->pod_port_share && pp->ports >= cfg->pod_port_share)) {
		/* The port cannot be recorded, so it cannot be protected: a
		 * restricted container gets no port, the others keep theirs. */
		count(COUNTER_PORT_TABLE_FULL);
		if (restricted)
			return bind_refuse(sk, family, &ci, leaf, cgid, LOCAL_PEER_UNKNOWN, REASON_PORT_SHARE);
		if (pp)
			pp->overflow = 1;
		return 1;
	}
	{
		struct bound_port nb = {
			.cgroup_id = leaf,
			.container_id = ci.container_id,
			.sockets = 1,
			.flags = restricted ? BP_RESTRICTED : 0,
		};

		if (bpf_map_update_elem(&sw_bound, &k, &nb, BPF_NOEXIST) != 0) {
			/* Another container won the race, or the table is full. */
			count(COUNTER_PORT_TABLE_FULL);
			if (restricted)
				return bind_refuse(sk, family, &ci, leaf, cgid, LOCAL_PEER_UNKNOWN, REASON_PORT_TAKEN);
			pp->overflow = 1;
			return 1;
		}
	}
	__sync_fetch_and_add(&pp->ports, 1);
	bind_remember(sk, &k);
	return 1;
}

SEC("cgroup/post_bind4")
int sw_post_bind4(struct bpf_sock *sk)
{
	return post_bind(sk, 4);
}

SEC("cgroup/post_bind6")
int sw_post_bind6(struct bpf_sock *sk)
{
	return post_bind(sk, 6);
}

/* The last socket of a container on a port closes: the port is free for
 * the pod again (a reservation stays). */
SEC("cgroup/sock_release")
int sw_sock_release(struct bpf_sock *sk)
{
	struct sock_bound *sb = bpf_sk_storage_get(&sw_sock_bound, sk, 0, 0);
	struct local_port_key k;
	struct bound_port *bp;

	if (!sb || !sb->key.port)
		return 1;
	k = sb->key;
	bp = bpf_map_lookup_elem(&sw_bound, &k);
	if (bp) {
		__sync_fetch_and_add(&bp->sockets, -1);
		if ((__s32)bp->sockets <= 0) {
			if (bp->flags & BP_RESERVED) {
				bp->sockets = 0;
				bp->cgroup_id = 0;
			} else if (bpf_map_delete_elem(&sw_bound, &k) == 0) {
				struct pod_ports *pp = bpf_map_lookup_elem(&sw_pod_ports, &k.pod_id);

				if (pp && pp->ports)
					__sync_fetch_and_add(&pp->ports, -1);
			}
		}
	}
	/* The storage goes with the socket (cgroup_sock may not delete it). */
	sb->key.port = 0;
	return 1;
}

char __license[] SEC("license") = "Dual BSD/GPL";
