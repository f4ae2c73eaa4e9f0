/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Types shared by every sidewall program and, through bpf2go -type, by the
 * Go API. Changing a layout here changes the pinned maps: the loader refuses
 * to adopt pins whose layout differs, so bump nothing silently. */
#pragma once

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Cilium's reserved identities, so Cilium's numbers can be used unchanged. */
#define IDENTITY_WORLD 2

/* A zero peer or protocol in a rule key is the wildcard. */
#define PEER_ANY 0
#define PROTO_ANY 0

/* Every value the Go side must agree on is an enum, so bpf2go -type
 * generates it for Go from this file (see CONTRACT_TYPES below). */

enum local_peer {
	/* Pod-local peer whose container is not known: matches only wildcards. */
	LOCAL_PEER_UNKNOWN = 0xffffffff,
};

/* linux/in.h would pull in the build host's asm/byteorder.h. */
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ICMPV6_ 58
#define IPPROTO_SCTP 132

enum direction {
	DIR_EGRESS = 0,
	DIR_INGRESS = 1,
};

enum verdict {
	VERDICT_ALLOW = 0,
	VERDICT_DENY = 1,
	VERDICT_AUDIT = 2, /* would have been denied; allowed by audit mode */
};

enum reason {
	REASON_NONE = 0,
	REASON_RULE_ALLOW = 1,   /* an allow rule matched */
	REASON_RULE_DENY = 2,    /* a deny rule matched */
	REASON_DEFAULT_DENY = 3, /* restricted direction, no allow rule */
	REASON_EXCLUSIVE = 4,    /* grant exclusive to a sibling container */
	REASON_REPLY = 5,        /* reply of a flow allowed the other way */
	REASON_UNRESTRICTED = 6, /* direction not restricted, nothing denies */
	REASON_UNCLASSIFIED = 7, /* cgroup of a restricted pod not yet classified */
	REASON_TRUNCATED = 8,    /* headers shorter than they claim */
	REASON_FRAGMENT = 9,     /* non-first fragment: no ports to match */
	REASON_UNKNOWN_L4 = 10,  /* L4 protocol sidewall cannot match */
	REASON_NO_VERDICT = 11,  /* verdict program slot empty: fail closed */
	REASON_MALFORMED = 12,   /* not IPv4/IPv6 */
	REASON_SELF = 13,        /* pod-local traffic of a container to itself */
	REASON_PORT_TAKEN = 14,  /* bind: the port is another container's (bound or declared) */
	REASON_PORT_SHARE = 15,  /* bind: the pod's share of the port table is used up */
	REASON_MAX = 16,
};

enum hook {
	HOOK_SKB = 0,
	HOOK_CONNECT = 1,
	HOOK_SENDMSG = 2,
	HOOK_BIND = 3, /* cgroup/post_bind4|6: a bind refused */
};

/* container_info.flags */
enum container_flag {
	CF_EGRESS_RESTRICTED = 1 << 0,
	CF_INGRESS_RESTRICTED = 1 << 1,
	CF_AUDIT = 1 << 2,
	CF_DENY_ALL = 1 << 3,  /* unclassified cgroup of a restricted pod */
	CF_FAIL_OPEN = 1 << 4, /* allow when the verdict program is missing */
	CF_FQDN = 1 << 5,      /* has toFQDNs rules: its DNS goes through the pod's proxy */
};

/* toFQDNs: rule peers FQDN_PEER_BASE + n stand for the n-th toFQDNs
 * selector of the container's policy; an address is such a peer while the
 * container's learned entry for it holds an unexpired time at index n. */
enum fqdn_limit {
	FQDN_SELECTORS = 16,
	FQDN_PEER_BASE = 0x7f000000,
	DNS_PORT = 53,
};

/* rule_info.action */
enum rule_action {
	RA_ALLOW = 1 << 0,
	RA_DENY = 1 << 1,
	RA_EXCLUSIVE = 1 << 2, /* the deny enforces a sibling's exclusive grant */
};

/* rule_key.flags: bit 0 direction, bit 1 pod-local peer, bits 2..6 port prefix length */
enum rule_key_flag {
	RK_INGRESS = 1 << 0,
	RK_LOCAL = 1 << 1,
	RK_PLEN_SHIFT = 2,
};

#define PORT_PLENS 17 /* 0 (any port) .. 16 (one port) */

/* Value of the containers map, keyed by cgroup id (u64). */
struct container_info {
	__u32 policy_id;
	__u32 pod_id;
	__u32 container_id; /* pod-local number used by intra-pod rules */
	__u32 flags;
};

/* Value of the pods map, keyed by pod id (u32). */
struct pod_info {
	__u32 ip4;     /* network order; 0 = none */
	__u8 ip6[16];  /* all zero = none */
	__u32 flags;
};

/* Rule key; a port range is stored as several aligned port prefixes. */
struct rule_key {
	__u32 policy_id;
	__u32 peer;   /* identity, or container id when RK_LOCAL; 0 = any */
	__u16 port;   /* host order, low 16-plen bits zero */
	__u8 proto;   /* 0 = any */
	__u8 flags;
};

struct rule_info {
	__u32 rule_id;
	__u8 action;
	__u8 pad[3];
};

/* Per policy, which port prefix lengths exist per direction, peer kind and
 * wildcard combination, so the verdict probes only keys that can exist.
 * Index: [dir*8 + local*4 + peer_any*2 + proto_any], bit n = prefix length n. */
struct policy_info {
	__u32 plens[16];
};

struct ip4_lpm_key {
	__u32 prefixlen;
	__u32 addr;
};

struct ip6_lpm_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct ip6_addr {
	__u8 addr[16];
};

/* (pod, proto, port): key of the bound-port table. */
struct local_port_key {
	__u32 pod_id;
	__u16 port; /* host order */
	__u8 proto;
	__u8 pad;
};

/* bound_port.flags */
enum bound_flag {
	BP_RESERVED = 1 << 0,   /* declared in the owner's containerPorts (written by the agent) */
	BP_RESTRICTED = 1 << 1, /* the owner is a restricted container */
};

/* Value of the bound-port table: which container holds (pod, proto, port).
 * Written by cgroup/post_bind for binds that succeeded, never overwritten
 * by another container, released when the owner's last socket on it closes
 * (cgroup/sock_release). A reservation (BP_RESERVED, no sockets) is a port
 * the pod spec declares for a container. */
struct bound_port {
	__u64 cgroup_id;    /* leaf cgroup of the owner's first socket; 0 = reserved only */
	__u32 container_id; /* the owner's container id; 0 = not classified when bound */
	__u32 sockets;      /* the owner's sockets counted on this port */
	__u32 flags;
	__u32 pad;
};

/* Per pod: ports in the bound table, against config.pod_port_share. */
struct pod_ports {
	__u32 ports;
	__u32 overflow; /* a bind could not be recorded: restricted binds are refused */
};

/* Socket storage of a socket counted in the bound table. */
struct sock_bound {
	struct local_port_key key;
};

/* Per container (classified cgroup) and CPU: the event token bucket. */
struct event_budget {
	__u64 last_ns;
	__u64 credit_ns; /* one event costs 1e9 / config.event_rate ns */
	__u64 dropped;   /* events this container lost to its budget */
};

/* sw_fqdn: what one container learned from the DNS answers it received
 * through the pod's DNS proxy. */
struct fqdn_key {
	__u64 cgroup_id; /* the classified cgroup of the container */
	__u8 addr[16];   /* IPv4 in the first 4 bytes, the rest zero */
	__u8 family;     /* 4 or 6 */
	__u8 pad[7];
};

struct fqdn_entry {
	/* Per selector index: until when (CLOCK_MONOTONIC seconds, exclusive)
	 * the address is that selector's; 0 = never learned. */
	__u32 expires[FQDN_SELECTORS];
};

/* sw_dns_proxy, by pod id: the port of the agent's DNS proxy on the pod's
 * loopback (127.0.0.1 and, with v6, ::1). */
struct dns_proxy {
	__u16 port;
	__u8 v6;
	__u8 pad;
};

/* sw_dns_orig (socket storage): where a redirected DNS socket really sent
 * to, for the proxy and for the reply's source address (recvmsg). */
struct dns_orig {
	__u8 addr[16];
	__u16 port;       /* host order */
	__u16 proxy_port; /* host order */
	__u8 family;      /* of addr: 4 or 6 */
	__u8 valid;
	__u8 pad[2];
	__u32 rule_id;    /* the rule that allowed the server */
};

/* sw_dns_pending: a query on its way to the proxy, by the container's
 * source port, written before the proxy can receive it. */
struct dns_pending_key {
	__u32 pod_id;
	__u16 port; /* the container socket's source port, host order */
	__u8 proto;
	__u8 pad;
};

struct dns_pending {
	__u64 cgroup_id; /* classified cgroup of the sender */
	__u8 addr[16];   /* the server the container sent to */
	__u16 port;
	__u8 family;
	__u8 pad;
	__u32 rule_id;
};

struct flow_key {
	__u64 cgroup_id;
	__u8 local[16];
	__u8 remote[16];
	__u16 lport;
	__u16 rport;
	__u8 proto;
	__u8 origin; /* direction of the packet that opened the flow */
	__u8 family;
	__u8 pad;
};

enum flow_flag {
	FLOW_LOCAL = 1 << 0, /* decided as pod-local traffic */
	FLOW_FQDN = 1 << 1,  /* opened to an address learned for toFQDNs: outlives the answer */
};

struct flow_info {
	__u64 first_seen_ns;
	__u32 policy_id;
	__u32 flags;
};

/* sw_config[0]: an epoch the Go side bumps on every map change, so cached
 * socket verdicts of an older epoch are decided again. */
struct config {
	__u64 epoch;
	__u64 flags;
	__u32 event_rate;       /* events per second per container and CPU; 0 = no limit */
	__u32 event_burst;      /* events a quiet container may send at once */
	__u32 deny_aggregate_ms; /* repeated denies of one flow are reported once per interval; 0 = every one */
	__u32 pod_port_share;   /* bound-table entries per pod; 0 = no limit */
};

enum config_flag {
	CONFIG_NO_SOCKET_CACHE = 1 << 0,
};

/* A socket's last allowed verdict per direction: a connected socket's
 * packets skip the identity, rule and flow lookups while nothing changed. */
struct verdict_cache_entry {
	__u64 epoch;
	__u64 cgroup_id;
	__u8 remote[16];
	__u16 lport;
	__u16 rport;
	__u8 proto;
	__u8 family;
	__u8 reason;
	__u8 valid;
};

struct verdict_cache {
	struct verdict_cache_entry dir[2];
};

/* Ring buffer record: one per deny, per audit, per new allowed flow. */
struct event {
	__u64 timestamp_ns;   /* bpf_ktime_get_ns */
	__u64 cgroup_id;      /* cgroup the packet/socket belongs to */
	__u64 policy_cgroup;  /* cgroup whose entry classified it (it or an ancestor) */
	__u64 socket_cookie;
	__u32 policy_id;
	__u32 rule_id;
	__u32 peer_identity;  /* identity, or container id for pod-local peers */
	__u32 container_id;
	__u8 saddr[16];       /* packet source, IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u16 sport;          /* host order */
	__u16 dport;
	__u8 family;          /* 4 or 6 */
	__u8 proto;
	__u8 direction;
	__u8 verdict;
	__u8 reason;
	__u8 hook;
	__u8 local;           /* pod-local traffic */
	__u8 new_flow;
};

/* Counter index: ((dir * 3) + verdict) * REASON_MAX + reason, then extras. */
enum counter {
	/* 0 .. COUNTER_EVENTS_LOST-1: direction x verdict x reason */
	COUNTER_EVENTS_LOST = 2 * 3 * REASON_MAX,
	COUNTER_UNKNOWN_CGROUP = COUNTER_EVENTS_LOST + 1,
	COUNTER_EVENTS_RATE_LIMITED = COUNTER_EVENTS_LOST + 2, /* over a container's budget */
	COUNTER_EVENTS_AGGREGATED = COUNTER_EVENTS_LOST + 3,   /* repeats of a reported deny */
	COUNTER_PORT_TABLE_FULL = COUNTER_EVENTS_LOST + 4,     /* a bind the table could not record */
	COUNTERS_MAX = COUNTER_EVENTS_LOST + 8,
};

/* skb->cb[] handoff from the entry program to the verdict program: the
 * classification, so the verdict need not look the container up again. */
#define CB_CGROUP_LO 0
#define CB_CGROUP_HI 1
#define CB_POLICY 2
#define CB_POD 3
#define CB_FLAGS 4 /* container flags in the low 16 bits, CB_MAGIC in the high 16 */
#define CB_MAGIC 0x5357 /* "SW": cb was written by a sidewall entry */

#define MAX_CGROUP_LEVEL 32

/* Every network namespace's loopback device has this ifindex
 * (LOOPBACK_IFINDEX, include/net/net_namespace.h). */
#define LOOPBACK_IFINDEX 1
#define PACKET_LOOPBACK 5 /* skb->pkt_type of a looped-back multicast/broadcast copy */

/* bpf2go -type finds a type only in the object's BTF, and an enum that
 * only names constants has none: these unused declarations put each
 * contract enum there, so Go gets it generated (objs/gen.go). */
#define CONTRACT_TYPES                                                         \
	const enum direction *__contract_direction __attribute__((unused));        \
	const enum verdict *__contract_verdict __attribute__((unused));            \
	const enum reason *__contract_reason __attribute__((unused));              \
	const enum hook *__contract_hook __attribute__((unused));                  \
	const enum container_flag *__contract_container_flag __attribute__((unused)); \
	const enum rule_action *__contract_rule_action __attribute__((unused));    \
	const enum rule_key_flag *__contract_rule_key_flag __attribute__((unused)); \
	const enum local_peer *__contract_local_peer __attribute__((unused));      \
	const enum counter *__contract_counter __attribute__((unused));           \
	const enum config_flag *__contract_config_flag __attribute__((unused));    \
	const enum bound_flag *__contract_bound_flag __attribute__((unused));      \
	const enum flow_flag *__contract_flow_flag __attribute__((unused));        \
	const enum fqdn_limit *__contract_fqdn_limit __attribute__((unused));
