/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Every map is pinned by name, so the objects of every attach point share
 * them and a restarted agent adopts them. Sizes are defaults; the Go loader
 * may override max_entries before the first load. */
#pragma once

#include "common.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u64); /* cgroup id */
	__type(value, struct container_info);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_containers SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* pod id */
	__type(value, struct pod_info);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_pods SEC(".maps");

/* Exact peers (pod /32, /128) first: a hash lookup costs the same at any
 * table size, where an LPM walk grows with it. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* IPv4, network order */
	__type(value, __u32); /* identity */
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_ident4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct ip6_addr);
	__type(value, __u32);
	__uint(max_entries, 262144);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_ident6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ip4_lpm_key);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_cidr4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct ip6_lpm_key);
	__type(value, __u32);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_cidr6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct rule_key);
	__type(value, struct rule_info);
	__uint(max_entries, 524288);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* policy id */
	__type(value, struct policy_info);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_policies SEC(".maps");

/* Ports bound in each pod, by the container that holds them. A plain hash,
 * not an LRU: an entry is removed when its sockets close, never evicted by
 * another pod's binds; each pod may hold config.pod_port_share of them. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct local_port_key);
	__type(value, struct bound_port);
	__uint(max_entries, 262144);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_bound SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* pod id */
	__type(value, struct pod_ports);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_pod_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__type(key, int);
	__type(value, struct sock_bound);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_sock_bound SEC(".maps");

/* Event budgets per classified cgroup, per CPU (no lock needed). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_PERCPU_HASH);
	__type(key, __u64);
	__type(value, struct event_budget);
	__uint(max_entries, 16384);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_event_budget SEC(".maps");

/* When a flow's deny was last reported, for aggregation. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, __u64);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_deny_seen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct flow_key);
	__type(value, struct flow_info);
	__uint(max_entries, 131072);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, COUNTERS_MAX);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__type(key, __u32);
	__type(value, struct config);
	__uint(max_entries, 1);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__type(key, int);
	__type(value, struct verdict_cache);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_sock_cache SEC(".maps");

/* Addresses each container learned from DNS answers (toFQDNs). Written by
 * the agent's DNS proxy before it passes the answer on; read by the verdict. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct fqdn_key);
	__type(value, struct fqdn_entry);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_fqdn SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, __u32); /* pod id */
	__type(value, struct dns_proxy);
	__uint(max_entries, 16384);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_dns_proxy SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__type(key, int);
	__type(value, struct dns_orig);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_dns_orig SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct dns_pending_key);
	__type(value, struct dns_pending);
	__uint(max_entries, 65536);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sw_dns_pending SEC(".maps");

/* Cilium's ipcache (cilium_ipcache_v2), read-only. Layout of Cilium
 * v1.20.2's struct ipcache_key and struct remote_endpoint_info
 * (pkg/maps/ipcache, bpf/lib/eps.h); the Go loader checks it against the
 * cilium module before it passes the pinned map in with MapReplacements.
 * Without a Cilium map this stays a one-entry empty trie, never pinned, so
 * every lookup misses and sidewall's own peer maps decide. */
struct cilium_ipcache_key {
	__u32 prefixlen; /* 32 (cluster_id, pad1, family) + address bits */
	__u16 cluster_id;
	__u8 pad1;
	__u8 family; /* 1 = IPv4, 2 = IPv6 (Cilium's ENDPOINT_KEY_*) */
	__u8 addr[16]; /* IPv4 in the first 4 bytes */
};

struct cilium_remote_endpoint_info {
	__u32 sec_identity;
	__u8 tunnel_endpoint[16];
	__u16 pad;
	__u8 key;
	__u8 flags;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__type(key, struct cilium_ipcache_key);
	__type(value, struct cilium_remote_endpoint_info);
	__uint(max_entries, 1);
	__uint(map_flags, BPF_F_NO_PREALLOC | BPF_F_RDONLY_PROG);
} sw_cilium_ipcache SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *c = bpf_map_lookup_elem(&sw_counters, &idx);
	if (c)
		*c += 1;
}

static __always_inline void count_verdict(__u8 dir, __u8 verdict, __u8 reason)
{
	count(((__u32)dir * 3 + verdict) * REASON_MAX + (reason & (REASON_MAX - 1)));
}

static __always_inline struct container_info *container_lookup(__u64 id)
{
	return bpf_map_lookup_elem(&sw_containers, &id);
}
