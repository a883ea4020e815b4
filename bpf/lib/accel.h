/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Local acceleration: the connections between the agent and the
 * applications it forwards to are both ends on this node, in the pod's
 * netns. When enabled, both sockets of such a connection join pc_socks and
 * pc_accel_msg hands each message straight to the peer socket's receive
 * queue (bpf_msg_redirect_hash with BPF_F_INGRESS), skipping TCP/IP and the
 * loopback device both ways.
 *
 * Only the agent's upstream sockets, recognised by their SO_MARK, and the
 * application sockets they connected to are ever redirected. Redirected
 * bytes are invisible to splice(2) on the receiving socket (tcp_splice_read
 * reads the TCP receive queue only), so an application that splices from
 * its sockets must not be accelerated: the feature is off by default. */
#ifndef PC_ACCEL_H
#define PC_ACCEL_H

#include <stdbool.h>

#include "common.h"

/* pc_accel_mark: SO_MARK the agent sets on its upstream sockets; 0 turns
 * local acceleration off (no socket joins pc_socks). Set at load. */
volatile const __u32 pc_accel_mark = 0;

/* struct pc_sock_key is one end of a local TCP connection as that end sees
 * it. Addresses are IPv4-mapped IPv6 for IPv4, as in pc_conn_key. */
struct pc_sock_key {
	__u64 netns_cookie;
	__u32 laddr[4];
	__u32 raddr[4];
	__u16 lport; /* host byte order */
	__u16 rport; /* host byte order */
	__u32 pad;
};

/* pc_socks: both ends of every accelerated connection. Not pinned: its
 * entries are live sockets of this agent's run. 65536 covers 32768 pooled
 * upstream connections per node. */
struct {
	__uint(type, BPF_MAP_TYPE_SOCKHASH);
	__uint(max_entries, 65536);
	__type(key, struct pc_sock_key);
	__type(value, __u64);
} pc_socks SEC(".maps");

/* struct pc_upstream is the state of one agent upstream socket. */
struct pc_upstream {
	/* tcp_only: a message of this socket went over TCP because its peer
	 * was not paired yet. Every later one must too, or the application
	 * could read a redirected message before the earlier TCP bytes. */
	__u32 tcp_only;
};

/* pc_upstreams: the agent's upstream sockets by their own key, from
 * ESTABLISHED to CLOSE (a socket only joins once its state callback is on).
 * Not LRU: evicting a tcp_only entry could reorder its bytes; when full, new
 * connections stay on TCP. Allocated on demand, so a node where nothing is
 * accelerated pays nothing. Not pinned. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct pc_sock_key);
	__type(value, struct pc_upstream);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} pc_upstreams SEC(".maps");

/* pc_accel_key_ops fills key, the socket's own view, from a sockops
 * context. */
static __always_inline bool pc_accel_key_ops(struct bpf_sock_ops *ops, struct pc_sock_key *key)
{
	if (ops->family == PC_AF_INET) {
		pc_v4mapped(key->laddr, ops->local_ip4);
		pc_v4mapped(key->raddr, ops->remote_ip4);
	} else if (ops->family == PC_AF_INET6) {
		key->laddr[0] = ops->local_ip6[0];
		key->laddr[1] = ops->local_ip6[1];
		key->laddr[2] = ops->local_ip6[2];
		key->laddr[3] = ops->local_ip6[3];
		key->raddr[0] = ops->remote_ip6[0];
		key->raddr[1] = ops->remote_ip6[1];
		key->raddr[2] = ops->remote_ip6[2];
		key->raddr[3] = ops->remote_ip6[3];
	} else {
		return false;
	}
	key->netns_cookie = bpf_get_netns_cookie(ops);
	key->lport = (__u16)ops->local_port;
	key->rport = (__u16)bpf_ntohl(ops->remote_port);
	return true;
}

/* pc_accel_reverse turns a socket's key into its peer's. */
static __always_inline void pc_accel_reverse(const struct pc_sock_key *k, struct pc_sock_key *r)
{
	r->netns_cookie = k->netns_cookie;
	r->laddr[0] = k->raddr[0];
	r->laddr[1] = k->raddr[1];
	r->laddr[2] = k->raddr[2];
	r->laddr[3] = k->raddr[3];
	r->raddr[0] = k->laddr[0];
	r->raddr[1] = k->laddr[1];
	r->raddr[2] = k->laddr[2];
	r->raddr[3] = k->laddr[3];
	r->lport = k->rport;
	r->rport = k->lport;
}

/* pc_accel_active runs when an outgoing connection is established
 * (BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB, softirq): an agent upstream socket
 * joins pc_socks and is remembered in pc_upstreams. */
static __always_inline void pc_accel_active(struct bpf_sock_ops *ops)
{
	struct pc_sock_key key = {};
	struct pc_upstream up = {};
	struct bpf_sock *sk;

	if (!pc_accel_mark)
		return;
	sk = ops->sk;
	if (!sk || sk->mark != pc_accel_mark)
		return;
	if (!pc_accel_key_ops(ops, &key))
		return;
	/* STATE_CB forgets the pc_upstreams entry on close (pc_socks drops
	 * closed sockets by itself): without it, no entry. */
	if (bpf_sock_ops_cb_flags_set(ops, ops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG)) {
		pc_count(PC_CNT_SOCKOPS_CB_FLAGS_ERROR);
		return;
	}
	if (bpf_map_update_elem(&pc_upstreams, &key, &up, BPF_ANY)) {
		pc_count(PC_CNT_ACCEL_UPDATE_ERROR);
		return;
	}
	if (bpf_sock_hash_update(ops, &pc_socks, &key, BPF_ANY)) {
		bpf_map_delete_elem(&pc_upstreams, &key);
		pc_count(PC_CNT_ACCEL_UPDATE_ERROR);
		return;
	}
}

/* pc_accel_passive runs when an incoming connection is established
 * (BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB): if the peer is an agent upstream
 * socket, this application socket joins pc_socks and the pair is complete.
 * The application cannot have sent anything yet (it has not even accepted
 * the connection), so its direction is redirected from the first byte. */
static __always_inline void pc_accel_passive(struct bpf_sock_ops *ops)
{
	struct pc_sock_key key = {}, peer = {};

	if (!pc_accel_mark)
		return;
	if (!pc_accel_key_ops(ops, &key))
		return;
	pc_accel_reverse(&key, &peer);
	if (!bpf_map_lookup_elem(&pc_upstreams, &peer))
		return;
	if (bpf_sock_hash_update(ops, &pc_socks, &key, BPF_ANY)) {
		pc_count(PC_CNT_ACCEL_UPDATE_ERROR);
		return;
	}
	pc_count(PC_CNT_ACCEL_PAIRED);
}

/* pc_accel_closed forgets an upstream socket entering TCP_CLOSE. */
static __always_inline void pc_accel_closed(struct bpf_sock_ops *ops)
{
	struct pc_sock_key key = {};

	if (!pc_accel_mark || ops->args[1] != BPF_TCP_CLOSE)
		return;
	if (!pc_accel_key_ops(ops, &key))
		return;
	bpf_map_delete_elem(&pc_upstreams, &key);
}

/* pc_accel_key_msg fills key, the sending socket's own view, from an
 * sk_msg context. */
static __always_inline bool pc_accel_key_msg(struct sk_msg_md *msg, struct pc_sock_key *key)
{
	if (msg->family == PC_AF_INET) {
		pc_v4mapped(key->laddr, msg->local_ip4);
		pc_v4mapped(key->raddr, msg->remote_ip4);
	} else if (msg->family == PC_AF_INET6) {
		key->laddr[0] = msg->local_ip6[0];
		key->laddr[1] = msg->local_ip6[1];
		key->laddr[2] = msg->local_ip6[2];
		key->laddr[3] = msg->local_ip6[3];
		key->raddr[0] = msg->remote_ip6[0];
		key->raddr[1] = msg->remote_ip6[1];
		key->raddr[2] = msg->remote_ip6[2];
		key->raddr[3] = msg->remote_ip6[3];
	} else {
		return false;
	}
	key->netns_cookie = bpf_get_netns_cookie(msg);
	key->lport = (__u16)msg->local_port;
	key->rport = (__u16)bpf_ntohl(msg->remote_port);
	return true;
}

/* pc_accel_msg is the verdict on every message sent by a socket in
 * pc_socks: to the peer's receive queue when the pair is complete, else
 * over TCP. */
static __always_inline int pc_accel_msg(struct sk_msg_md *msg)
{
	struct pc_sock_key key = {}, peer = {};
	struct pc_upstream *up;

	if (!pc_accel_key_msg(msg, &key))
		return SK_PASS;
	up = bpf_map_lookup_elem(&pc_upstreams, &key);
	if (up && up->tcp_only)
		return SK_PASS;
	pc_accel_reverse(&key, &peer);
	if (bpf_msg_redirect_hash(msg, &pc_socks, &peer, BPF_F_INGRESS) == SK_PASS)
		return SK_PASS;
	/* No peer. For an upstream socket this is the race of its first
	 * write with the application side's handshake: stay on TCP for good.
	 * An application socket only gets here once the agent's socket is
	 * gone, when nothing is left to reorder. */
	if (up) {
		up->tcp_only = 1;
		pc_count(PC_CNT_ACCEL_TCP_ONLY);
	}
	return SK_PASS;
}

#endif /* PC_ACCEL_H */
