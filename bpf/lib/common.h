/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Shared types, constants and the error/verdict counters of the Portcullis
 * datapath. Every struct here is exported to Go with bpf2go -type. */
#ifndef PC_COMMON_H
#define PC_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* TCX verdicts (include/uapi/linux/bpf.h since 6.6; Debian 12's uapi headers
 * predate them). TCX_NEXT hands the packet to the next program in the chain
 * or, at the end of the chain, to the stack as TCX_PASS would. */
#define PC_TCX_NEXT (-1)
#define PC_TCX_PASS 0
#define PC_TCX_DROP 2

#define PC_AF_INET 2
#define PC_AF_INET6 10

/* enum pc_counter names the slots of pc_counters. Go reads the map on scrape
 * and exports each slot as portcullis_datapath_events_total{event=...}. */
enum pc_counter {
	/* capture: TCP packet to a port the pod does not capture. */
	PC_CNT_CAPTURE_UNCAPTURED = 0,
	/* capture: packet of an existing connection (established, request or
	 * timewait socket): left to the stack. */
	PC_CNT_CAPTURE_ESTABLISHED,
	/* capture: packet assigned to the agent's listener. */
	PC_CNT_CAPTURE_ASSIGNED,
	/* capture: dropped, no agent listener in the pod's netns (fail closed). */
	PC_CNT_CAPTURE_NO_LISTENER,
	/* capture: dropped, bpf_sk_assign refused the listener. */
	PC_CNT_CAPTURE_ASSIGN_ERROR,
	/* capture: dropped, headers could not be parsed far enough to know the
	 * destination port (truncated packet, too many IPv6 extension headers,
	 * first fragment to a captured port). */
	PC_CNT_CAPTURE_MALFORMED,
	/* capture: packet on an attached interface of a netns with no pod entry
	 * (pod being removed): passed. */
	PC_CNT_CAPTURE_NOT_ENROLLED,
	/* capture: dropped, a SYN to a captured port reusing the 4-tuple of a
	 * TIME_WAIT socket (see pc_lookup_existing). */
	PC_CNT_CAPTURE_TIMEWAIT_SYN,
	/* sockops: connection recorded with the caller's identity. */
	PC_CNT_SOCKOPS_RECORDED,
	/* sockops: connection record removed on close. */
	PC_CNT_SOCKOPS_FORGOTTEN,
	/* sockops: writing the connection record failed. */
	PC_CNT_SOCKOPS_UPDATE_ERROR,
	/* sockops: bpf_sock_ops_cb_flags_set failed: the record will only be
	 * removed by LRU eviction. */
	PC_CNT_SOCKOPS_CB_FLAGS_ERROR,
	/* accel: an application socket joined its agent upstream socket in
	 * pc_socks: the connection is accelerated both ways. */
	PC_CNT_ACCEL_PAIRED,
	/* accel: a socket could not join pc_socks or pc_upstreams (map full):
	 * the connection stays on TCP. */
	PC_CNT_ACCEL_UPDATE_ERROR,
	/* accel: an upstream socket sent before its peer was paired: it stays
	 * on TCP agent-to-application for its lifetime. */
	PC_CNT_ACCEL_TCP_ONLY,
	/* capture: dropped, the socket listening on the listener port for the
	 * packet's destination is not the agent's (not flagged in
	 * pc_listeners): an application of the pod holds the port, and
	 * must not receive captured connections unchecked (fail closed). */
	PC_CNT_CAPTURE_FOREIGN_LISTENER,
	PC_CNT_MAX,
};

/* Pod capture modes (struct pc_pod.mode). */
enum pc_capture_mode {
	/* Capture exactly the ports listed in pc_ports. */
	PC_MODE_LISTED = 0,
	/* Capture every port except those listed in pc_ports. */
	PC_MODE_ALL_EXCEPT = 1,
};

#define PC_POD_KEY_LEN 320

/* struct pc_pod is a pod enrolled for capture, keyed by the netns cookie of
 * its network namespace. key is only read by userspace (restart re-adoption
 * and the debug CLI): "namespace/name", NUL padded. */
struct pc_pod {
	enum pc_capture_mode mode;
	/* generation of the pc_ports entries in force. The loader writes a new
	 * port list under generation+1, then swaps this value in one map update,
	 * then deletes the old entries: a port list change is atomic. */
	__u32 generation;
	__u32 nports;
	char key[PC_POD_KEY_LEN];
};

/* struct pc_port_key is one port of a pod's port list. */
struct pc_port_key {
	__u64 netns_cookie;
	__u16 port; /* host byte order */
	__u16 pad;
	__u32 generation;
};

/* struct pc_conn_key is a TCP connection as the connecting side sees it.
 * Addresses are 16 bytes, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), so one
 * lookup serves both families and dual-stack sockets. */
struct pc_conn_key {
	__u32 saddr[4]; /* the caller (connecting socket's local address) */
	__u32 daddr[4]; /* the callee (where the caller connected to) */
	__u16 sport;    /* host byte order */
	__u16 dport;    /* host byte order */
	__u32 pad;
};

/* struct pc_conn is what the datapath knows about the caller. */
struct pc_conn {
	__u32 identity;  /* identity ID of the caller's pod, never 0 */
	__u32 pad;
	__u64 cgroup_id; /* the registered cgroup that matched */
};

/* pc_v4mapped writes addr (network byte order) as ::ffff:a.b.c.d. */
static __always_inline void pc_v4mapped(__u32 *dst, __u32 addr)
{
	dst[0] = 0;
	dst[1] = 0;
	dst[2] = bpf_htonl(0x0000ffff);
	dst[3] = addr;
}

/* pc_counters: per-CPU event counters, one slot per enum pc_counter.
 * Per-CPU so that counting never contends between cores. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PC_CNT_MAX);
	__type(key, enum pc_counter);
	__type(value, __u64);
} pc_counters SEC(".maps");

static __always_inline void pc_count(enum pc_counter c)
{
	enum pc_counter key = c;
	__u64 *v = bpf_map_lookup_elem(&pc_counters, &key);

	if (v)
		*v += 1;
}

#endif /* PC_COMMON_H */
