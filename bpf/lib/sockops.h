/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Socket -> identity: record, for every TCP connection a process of an
 * enrolled workload opens, which workload opened it, so that the agent can
 * name the caller of a connection it accepted. */
#ifndef PC_SOCKOPS_H
#define PC_SOCKOPS_H

#include <stdbool.h>

#include "common.h"

/* pc_cgroups: cgroup v2 ID (the cgroup directory's inode number) -> identity
 * ID of the workload that owns the cgroup. Holds every pod of the node, also
 * pods that are not captured, so that any caller is named. 4096 leaves room
 * for 250 pods registered per container cgroup. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} pc_cgroups SEC(".maps");

/* pc_conns: connections opened by workloads, removed when the socket
 * reaches TCP_CLOSE. LRU so that a record whose close was missed (state
 * callbacks refused) is evicted rather than filling the map; 131072 covers
 * 100k concurrent connections with headroom (~14 MiB, preallocated by the
 * kernel for LRU maps). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 131072);
	__type(key, struct pc_conn_key);
	__type(value, struct pc_conn);
} pc_conns SEC(".maps");

/* Deepest cgroup level inspected: Kubernetes pods sit at level 3 to 6
 * (kubepods.slice/kubepods-<qos>.slice/<pod>.slice/<container>.scope). */
#define PC_MAX_CGROUP_LEVEL 16

/* pc_caller_identity returns the identity of the current task's cgroup or of
 * its deepest registered ancestor, 0 when none is registered. Only valid in
 * the connecting process's context (BPF_SOCK_OPS_TCP_CONNECT_CB). */
static __always_inline __u32 pc_caller_identity(__u64 *cgroup_id)
{
	int level;

	for (level = PC_MAX_CGROUP_LEVEL - 1; level > 0; level--) {
		__u64 id = bpf_get_current_ancestor_cgroup_id(level);
		__u32 *identity;

		/* 0: level is deeper than the current cgroup. */
		if (!id)
			continue;
		identity = bpf_map_lookup_elem(&pc_cgroups, &id);
		if (identity && *identity) {
			*cgroup_id = id;
			return *identity;
		}
	}
	return 0;
}

/* pc_conn_key_from fills key from the connecting socket. Returns false for
 * loopback destinations: those never cross a pod interface, are never
 * captured and repeat the same tuples in every netns. */
static __always_inline bool pc_conn_key_from(struct bpf_sock_ops *ops, struct pc_conn_key *key)
{
	if (ops->family == PC_AF_INET) {
		if ((bpf_ntohl(ops->remote_ip4) >> 24) == 127)
			return false;
		pc_v4mapped(key->saddr, ops->local_ip4);
		pc_v4mapped(key->daddr, ops->remote_ip4);
	} else if (ops->family == PC_AF_INET6) {
		key->saddr[0] = ops->local_ip6[0];
		key->saddr[1] = ops->local_ip6[1];
		key->saddr[2] = ops->local_ip6[2];
		key->saddr[3] = ops->local_ip6[3];
		key->daddr[0] = ops->remote_ip6[0];
		key->daddr[1] = ops->remote_ip6[1];
		key->daddr[2] = ops->remote_ip6[2];
		key->daddr[3] = ops->remote_ip6[3];
		/* ::1 */
		if (!key->daddr[0] && !key->daddr[1] && !key->daddr[2] &&
		    key->daddr[3] == bpf_htonl(1))
			return false;
		/* ::ffff:127.0.0.0/104 */
		if (!key->daddr[0] && !key->daddr[1] &&
		    key->daddr[2] == bpf_htonl(0x0000ffff) &&
		    (bpf_ntohl(key->daddr[3]) >> 24) == 127)
			return false;
	} else {
		return false;
	}
	key->sport = (__u16)ops->local_port;
	/* remote_port holds the port in network byte order in its upper half
	 * on little-endian (see the bpf_sock_ops comment in uapi bpf.h). */
	key->dport = (__u16)bpf_ntohl(ops->remote_port);
	return true;
}

/* pc_sockops_connect records a connection at BPF_SOCK_OPS_TCP_CONNECT_CB,
 * which runs in connect(2) (tcp_connect), in the caller's context and after
 * the source port was chosen. */
static __always_inline void pc_sockops_connect(struct bpf_sock_ops *ops)
{
	struct pc_conn_key key = {};
	struct pc_conn conn = {};

	conn.identity = pc_caller_identity(&conn.cgroup_id);
	if (!conn.identity)
		return;
	if (!pc_conn_key_from(ops, &key))
		return;
	if (bpf_map_update_elem(&pc_conns, &key, &conn, BPF_ANY)) {
		pc_count(PC_CNT_SOCKOPS_UPDATE_ERROR);
		return;
	}
	pc_count(PC_CNT_SOCKOPS_RECORDED);
	/* Ask for BPF_SOCK_OPS_STATE_CB on this socket to forget it on close. */
	if (bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG))
		pc_count(PC_CNT_SOCKOPS_CB_FLAGS_ERROR);
}

/* pc_sockops_state forgets a connection when it enters TCP_CLOSE. This may
 * run in softirq context: it only uses the socket's own fields. */
static __always_inline void pc_sockops_state(struct bpf_sock_ops *ops)
{
	struct pc_conn_key key = {};

	/* args[0]: old state, args[1]: new state. */
	if (ops->args[1] != BPF_TCP_CLOSE)
		return;
	if (!pc_conn_key_from(ops, &key))
		return;
	if (!bpf_map_delete_elem(&pc_conns, &key))
		pc_count(PC_CNT_SOCKOPS_FORGOTTEN);
}

#endif /* PC_SOCKOPS_H */
