// Package objs holds the BPF objects of the sidewall datapath as compiled by
// bpf2go from ../bpf: one object per attach point, with the Go mirrors of
// the C structs shared with userspace. It holds nothing else; loading,
// pinning and attaching live in package bpfext.
package objs

//go:generate go tool bpf2go -cc $BPF_CLANG -strip $BPF_STRIP -target bpfel -cflags "-O2 -Wall -Werror -I../bpf/include -I../bpf" -type event -type container_info -type pod_info -type rule_key -type rule_info -type policy_info -type local_port_key -type flow_key -type flow_info -type ip4_lpm_key -type ip6_lpm_key -type ip6_addr -type direction -type verdict -type reason -type hook -type container_flag -type rule_action -type rule_key_flag -type local_peer -type counter -type config_flag -type cilium_ipcache_key -type cilium_remote_endpoint_info -type bound_port -type pod_ports -type event_budget -type bound_flag -type flow_flag -type fqdn_key -type fqdn_entry -type dns_proxy -type dns_pending_key -type dns_pending -type dns_orig -type fqdn_limit Skb ../bpf/cgroup_skb.c
//go:generate go tool bpf2go -cc $BPF_CLANG -strip $BPF_STRIP -target bpfel -cflags "-O2 -Wall -Werror -I../bpf/include -I../bpf" Sock ../bpf/sock_addr.c
