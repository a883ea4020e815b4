/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/* Inbound capture: decide, for a packet arriving on a pod's interface, whether
 * it belongs to a new connection to a captured port and if so hand it to the
 * agent's listener in the pod's netns with bpf_sk_assign. */
#ifndef PC_CAPTURE_H
#define PC_CAPTURE_H

#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/tcp.h>
#include <linux/pkt_cls.h>
#include <stdbool.h>

#include "common.h"

/* pc_listener_port is the port of the agent's listener in every pod netns
 * (host byte order). It is never captured. Set by the loader before load. */
const volatile __u16 pc_listener_port = 0;

/* pc_listeners flags the agent's listening sockets: Datapath.Listen
 * stores PC_LISTENER_FLAG for its listener's socket from user space (a map
 * update keyed by the socket's fd, which needs this map's fd: CAP_BPF or
 * CAP_SYS_ADMIN, never an application pod's). Capture assigns a connection
 * only to a listener that has it: whatever else listens on
 * pc_listener_port in the pod (the application, by accident or while the
 * agent's listener is missing) is refused and the packet dropped. An
 * SO_MARK would not do: since Linux 5.17 CAP_NET_RAW, in the default
 * capability set of containers, is enough to set one. Not pinned: the
 * listeners of a previous agent run are gone with it, and the capture
 * programs a new run re-adopts use its map. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u8);
} pc_listeners SEC(".maps");

#define PC_LISTENER_FLAG 1

/* pc_pod_netns_cookie is the netns cookie of the pod this program instance
 * serves: the loader loads one instance per pod. The program cannot learn
 * its netns at ingress: bpf_get_netns_cookie(skb) names skb->sk's netns and
 * init_net when the skb has no socket yet, which is every ingress packet
 * (net/core/filter.c, __bpf_get_netns_cookie). */
const volatile __u64 pc_pod_netns_cookie = 0;

/* pc_l3_dev is set by the loader in the instance it attaches to devices
 * without an Ethernet header (tun, wireguard, ipip, sit, gre: ARPHRD_NONE
 * and the IP tunnel types). What precedes the network header at TCX ingress
 * depends on the device: the kernel pushes the skb back by mac_len
 * (net/core/dev.c, tcx_run with needs_mac), which is 0 for tun but covers
 * the outer headers when a tunnel left its mac header on them. So this
 * instance reads headers relative to the network header the stack set
 * (bpf_skb_load_bytes_relative, BPF_HDR_START_NET), which is where ip_rcv
 * will parse the packet, whatever the device. skb->protocol is set either
 * way. The Ethernet instance reads at ETH_HLEN with bpf_skb_load_bytes. */
const volatile __u8 pc_l3_dev = 0;

/* pc_pods: enrolled pods by netns cookie. Sized for a node with 250 pods
 * with room for pods that are being replaced. ~330 bytes per entry. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, struct pc_pod);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} pc_pods SEC(".maps");

/* pc_ports: the ports listed for each pod (captured in PC_MODE_LISTED,
 * excluded in PC_MODE_ALL_EXCEPT). 64 ports per pod (enforced by the loader)
 * for 256 pods, twice: during an update old and new generations coexist. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 32768);
	__type(key, struct pc_port_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} pc_ports SEC(".maps");

/* IPv6 extension headers skipped before the transport header. More than this
 * and the packet is dropped if it may be TCP (see pc_parse_ipv6). */
#define PC_MAX_IPV6_EXT 6

/* 802.1Q/802.1AD tags skipped before the IP header. More than this and the
 * packet is dropped (see pc_parse). */
#define PC_MAX_VLAN_TAGS 4

/* pc_pull_len caps what the L3 instance pulls into the linear part when a
 * header it reads is outside it (see pc_load): the packet's headers after
 * whatever precedes the network header (mac_len, at most the outer headers
 * of a tunnel). */
#define PC_PULL_SLACK 256

#define PC_IP_MF 0x2000
#define PC_IP_OFFSET 0x1fff

/* struct pc_pkt is what capture needs from a packet. */
struct pc_pkt {
	struct bpf_sock_tuple tuple;
	__u16 dport; /* host byte order */
	bool ipv6;
	bool tcp;
	/* fragment: a fragment (IPv4 MF/offset, IPv6 fragment header). */
	bool fragment;
	/* later_fragment: a non-first fragment; carries no TCP header. */
	bool later_fragment;
	/* syn: a SYN without ACK, the first segment of a new connection. */
	bool syn;
	/* vlan: the IP header came after 802.1Q/802.1AD tags in the payload,
	 * which the stack strips only after TCX ran (vlan_do_receive). */
	bool vlan;
};

#define PC_TCP_FLAG_SYN 0x02
#define PC_TCP_FLAG_ACK 0x10

/* pc_tcp_head is the part of the TCP header capture reads: the first
 * PC_TCP_HEAD_LEN bytes (sizeof is 16 with the tail padding, which must not
 * be read: it would call a 14-byte header malformed). */
struct pc_tcp_head {
	__be16 sport;
	__be16 dport;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff_res;
	__u8 flags;
};

#define PC_TCP_HEAD_LEN 14
_Static_assert(__builtin_offsetof(struct pc_tcp_head, flags) + 1 == PC_TCP_HEAD_LEN,
	       "pc_tcp_head layout");

static __always_inline void pc_set_tcp(struct pc_pkt *pkt, const struct pc_tcp_head *th)
{
	pkt->dport = bpf_ntohs(th->dport);
	pkt->syn = (th->flags & (PC_TCP_FLAG_SYN | PC_TCP_FLAG_ACK)) == PC_TCP_FLAG_SYN;
}

enum pc_parse {
	PC_PARSE_OK = 0,
	PC_PARSE_NOT_IP,
	PC_PARSE_MALFORMED,
};

/* pc_load reads len bytes at offset off from the network header. Headers
 * are read with helpers rather than direct packet access so that a header
 * outside the linear part of the skb is still parsed instead of being
 * mistaken for a malformed packet: bpf_skb_load_bytes reads fragments;
 * bpf_skb_load_bytes_relative reads the linear part only, so when it fails
 * the header is pulled into the linear part and read again (rare: tun with
 * IFF_VNET_HDR, GSO). bpf_skb_pull_data pulls the given length counted from
 * skb->data, which is at the mac header at TCX ingress, so the length covers
 * what precedes the network header (PC_PULL_SLACK) and is capped at the
 * packet's length; with 0 it would pull nothing (it only makes the linear
 * part writable). Returns 0 or a negative error. */
static __always_inline long pc_load(struct __sk_buff *skb, __u32 off, void *to, __u32 len)
{
	__u32 want;

	if (!pc_l3_dev)
		return bpf_skb_load_bytes(skb, ETH_HLEN + off, to, len);
	if (bpf_skb_load_bytes_relative(skb, off, to, len, BPF_HDR_START_NET) == 0)
		return 0;
	want = off + len + PC_PULL_SLACK;
	if (want > skb->len)
		want = skb->len;
	if (bpf_skb_pull_data(skb, want) < 0)
		return -1;
	return bpf_skb_load_bytes_relative(skb, off, to, len, BPF_HDR_START_NET);
}

static __always_inline enum pc_parse pc_parse_ipv4(struct __sk_buff *skb, struct pc_pkt *pkt,
						   __u32 off)
{
	struct iphdr ip;
	struct pc_tcp_head th;
	__u32 ihl;

	if (pc_load(skb, off, &ip, sizeof(ip)) < 0)
		return PC_PARSE_MALFORMED;
	if (ip.protocol != IPPROTO_TCP)
		return PC_PARSE_OK;
	pkt->tcp = true;
	if (ip.frag_off & bpf_htons(PC_IP_MF | PC_IP_OFFSET)) {
		pkt->fragment = true;
		if (ip.frag_off & bpf_htons(PC_IP_OFFSET)) {
			pkt->later_fragment = true;
			return PC_PARSE_OK;
		}
	}
	ihl = ip.ihl * 4;
	if (ihl < sizeof(ip))
		return PC_PARSE_MALFORMED;
	if (pc_load(skb, off + ihl, &th, PC_TCP_HEAD_LEN) < 0)
		return PC_PARSE_MALFORMED;
	pkt->tuple.ipv4.saddr = ip.saddr;
	pkt->tuple.ipv4.daddr = ip.daddr;
	pkt->tuple.ipv4.sport = th.sport;
	pkt->tuple.ipv4.dport = th.dport;
	pc_set_tcp(pkt, &th);
	return PC_PARSE_OK;
}

static __always_inline bool pc_ipv6_ext(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_FRAGMENT;
}

static __always_inline enum pc_parse pc_parse_ipv6(struct __sk_buff *skb, struct pc_pkt *pkt,
						   __u32 off)
{
	struct ipv6hdr ip6;
	struct pc_tcp_head th;
	__u8 nexthdr;
	int i;

	pkt->ipv6 = true;
	if (pc_load(skb, off, &ip6, sizeof(ip6)) < 0)
		return PC_PARSE_MALFORMED;
	off += sizeof(ip6);
	nexthdr = ip6.nexthdr;

	/* Walk extension headers (RFC 8200 section 4) so that a header chain
	 * cannot hide a TCP segment from capture. */
	for (i = 0; i < PC_MAX_IPV6_EXT; i++) {
		struct ipv6_opt_hdr opt;

		if (!pc_ipv6_ext(nexthdr))
			break;
		if (pc_load(skb, off, &opt, sizeof(opt)) < 0)
			return PC_PARSE_MALFORMED;
		if (nexthdr == IPPROTO_FRAGMENT) {
			__be16 frag_off;

			if (pc_load(skb, off + 2, &frag_off, sizeof(frag_off)) < 0)
				return PC_PARSE_MALFORMED;
			pkt->fragment = true;
			if (frag_off & bpf_htons(0xfff8)) {
				pkt->later_fragment = true;
				pkt->tcp = opt.nexthdr == IPPROTO_TCP;
				return PC_PARSE_OK;
			}
			off += 8;
		} else {
			off += (opt.hdrlen + 1) * 8;
		}
		nexthdr = opt.nexthdr;
	}
	if (pc_ipv6_ext(nexthdr))
		return PC_PARSE_MALFORMED;
	if (nexthdr != IPPROTO_TCP)
		return PC_PARSE_OK;
	pkt->tcp = true;
	if (pc_load(skb, off, &th, PC_TCP_HEAD_LEN) < 0)
		return PC_PARSE_MALFORMED;
	__builtin_memcpy(pkt->tuple.ipv6.saddr, &ip6.saddr, 16);
	__builtin_memcpy(pkt->tuple.ipv6.daddr, &ip6.daddr, 16);
	pkt->tuple.ipv6.sport = th.sport;
	pkt->tuple.ipv6.dport = th.dport;
	pc_set_tcp(pkt, &th);
	return PC_PARSE_OK;
}

static __always_inline bool pc_vlan_proto(__be16 proto)
{
	return proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD);
}

/* pc_vlan_tag is an 802.1Q/802.1AD tag in the payload (struct vlan_hdr). */
struct pc_vlan_tag {
	__be16 tci;
	__be16 proto;
};

/* pc_parse fills pkt from the packet's network header, of the protocol
 * skb->protocol names.
 *
 * VLAN tags: the stack strips one tag before TCX (skb_vlan_untag), and
 * skb->protocol then names what follows it. A frame with more tags arrives
 * here with skb->protocol 802.1Q or 802.1AD and the next tag at the network
 * header. Such a frame is not dropped by the stack when the pod has no
 * VLAN device: for VID 0 (priority tags) vlan_do_receive strips the next
 * tag after TCX ran and delivers the packet to IP, so a TCP segment hidden
 * behind tags would reach the application without capture. So tags are
 * skipped (up to PC_MAX_VLAN_TAGS; more and the packet is dropped) and the
 * packet behind them parsed, marked pkt->vlan. */
static __always_inline enum pc_parse pc_parse(struct __sk_buff *skb, struct pc_pkt *pkt)
{
	__be16 proto = skb->protocol;
	__u32 off = 0;
	int i;

	for (i = 0; i < PC_MAX_VLAN_TAGS; i++) {
		struct pc_vlan_tag tag;

		if (!pc_vlan_proto(proto))
			break;
		if (pc_load(skb, off, &tag, sizeof(tag)) < 0)
			return PC_PARSE_MALFORMED;
		pkt->vlan = true;
		proto = tag.proto;
		off += sizeof(tag);
	}
	if (pc_vlan_proto(proto))
		return PC_PARSE_MALFORMED;
	if (proto == bpf_htons(ETH_P_IP))
		return pc_parse_ipv4(skb, pkt, off);
	if (proto == bpf_htons(ETH_P_IPV6))
		return pc_parse_ipv6(skb, pkt, off);
	return PC_PARSE_NOT_IP;
}

/* pc_port_captured reports whether a pod captures port. The agent's own
 * listener port is never captured, whatever the pod's list says. */
static __always_inline bool pc_port_captured(__u64 cookie, const struct pc_pod *pod, __u16 port)
{
	struct pc_port_key key = {
		.netns_cookie = cookie,
		.port = port,
		.generation = pod->generation,
	};
	bool listed;

	if (port == pc_listener_port)
		return false;
	listed = bpf_map_lookup_elem(&pc_ports, &key) != NULL;
	if (pod->mode == PC_MODE_ALL_EXCEPT)
		return !listed;
	return listed;
}

enum pc_existing {
	/* No socket but possibly a listener: a new connection. */
	PC_EXISTING_NONE = 0,
	/* An established or request (SYN_RECV) socket, including connections
	 * the agent already accepted, or a timewait socket for a non-SYN
	 * segment: the stack handles it. */
	PC_EXISTING_SOCKET,
	/* A SYN that hits a TIME_WAIT socket. */
	PC_EXISTING_TIMEWAIT_SYN,
};

/* pc_lookup_existing looks up the socket the packet belongs to.
 *
 * A SYN that hits a TIME_WAIT socket is a new connection that the stack
 * would accept as such (tcp_timewait_state_process -> TCP_TW_SYN) and hand
 * to the listener it looks up for the destination port, the app's: that
 * would bypass capture. It cannot go to the agent either: the new request
 * socket collides with the timewait socket in the established hash
 * (inet_ehash_insert found_dup_sk) and the SYN is dropped there. So it is
 * dropped here, counted; the client retries, and succeeds once the timewait
 * socket expires (net.ipv4.tcp_fin_timeout). The agent avoids creating
 * such sockets by letting clients close first. */
static __always_inline enum pc_existing pc_lookup_existing(struct __sk_buff *skb, struct pc_pkt *pkt)
{
	struct bpf_sock *sk;
	enum pc_existing res = PC_EXISTING_SOCKET;

	if (pkt->ipv6)
		sk = bpf_skc_lookup_tcp(skb, &pkt->tuple, sizeof(pkt->tuple.ipv6), BPF_F_CURRENT_NETNS, 0);
	else
		sk = bpf_skc_lookup_tcp(skb, &pkt->tuple, sizeof(pkt->tuple.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return PC_EXISTING_NONE;
	if (sk->state == BPF_TCP_LISTEN)
		res = PC_EXISTING_NONE;
	else if (pkt->syn && sk->state == BPF_TCP_TIME_WAIT)
		res = PC_EXISTING_TIMEWAIT_SYN;
	bpf_sk_release(sk);
	return res;
}

/* pc_assign_listener hands the packet to the agent's listener on
 * pc_listener_port in the packet's netns. The lookup uses the packet's
 * destination address (a listener bound to the pod IP or to the wildcard
 * matches) with a zero source, so that it can only find a listener. The
 * stack's own listener lookup picks the most specific socket, so it may
 * find one that is not the agent's: an application's socket bound to the
 * pod's address or the wildcard on that port. Only a listener flagged in
 * pc_listeners is used; any other means the packet is dropped.
 * Returns a TCX verdict. */
static __always_inline int pc_assign_listener(struct __sk_buff *skb, struct pc_pkt *pkt)
{
	struct bpf_sock_tuple ln = {};
	struct bpf_sock *sk, *full;
	__u8 *flag = NULL;
	long err;

	if (pkt->ipv6) {
		__builtin_memcpy(ln.ipv6.daddr, pkt->tuple.ipv6.daddr, 16);
		ln.ipv6.dport = bpf_htons(pc_listener_port);
		sk = bpf_skc_lookup_tcp(skb, &ln, sizeof(ln.ipv6), BPF_F_CURRENT_NETNS, 0);
	} else {
		ln.ipv4.daddr = pkt->tuple.ipv4.daddr;
		ln.ipv4.dport = bpf_htons(pc_listener_port);
		sk = bpf_skc_lookup_tcp(skb, &ln, sizeof(ln.ipv4), BPF_F_CURRENT_NETNS, 0);
	}
	if (!sk) {
		pc_count(PC_CNT_CAPTURE_NO_LISTENER);
		return PC_TCX_DROP;
	}
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		pc_count(PC_CNT_CAPTURE_NO_LISTENER);
		return PC_TCX_DROP;
	}
	/* A listener is a full socket, which bpf_sk_storage_get wants.
	 * bpf_sk_fullsock returns the same socket, still referenced through
	 * sk. Without BPF_SK_STORAGE_GET_F_CREATE nothing is stored. */
	full = bpf_sk_fullsock(sk);
	if (full)
		flag = bpf_sk_storage_get(&pc_listeners, full, 0, 0);
	if (!flag || *flag != PC_LISTENER_FLAG) {
		bpf_sk_release(sk);
		pc_count(PC_CNT_CAPTURE_FOREIGN_LISTENER);
		return PC_TCX_DROP;
	}
	/* bpf_sk_assign (bpf-helpers(7)): the stack delivers the skb to sk
	 * instead of looking a socket up; the accepted socket keeps the
	 * packet's destination as its local address. */
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	if (err) {
		pc_count(PC_CNT_CAPTURE_ASSIGN_ERROR);
		return PC_TCX_DROP;
	}
	pc_count(PC_CNT_CAPTURE_ASSIGNED);
	return PC_TCX_PASS;
}

/* pc_capture is the whole ingress decision. Returns a TCX verdict. */
static __always_inline int pc_capture(struct __sk_buff *skb)
{
	struct pc_pkt pkt = {};
	struct pc_pod *pod;
	__u64 cookie;

	switch (pc_parse(skb, &pkt)) {
	case PC_PARSE_NOT_IP:
		return PC_TCX_NEXT;
	case PC_PARSE_MALFORMED:
		/* Could be TCP to a captured port: fail closed. */
		pc_count(PC_CNT_CAPTURE_MALFORMED);
		return PC_TCX_DROP;
	case PC_PARSE_OK:
		break;
	}
	if (!pkt.tcp || pkt.later_fragment)
		/* A later fragment alone opens nothing: its first fragment is
		 * dropped below if it goes to a captured port, so reassembly
		 * can never complete. */
		return PC_TCX_NEXT;

	cookie = pc_pod_netns_cookie;
	pod = bpf_map_lookup_elem(&pc_pods, &cookie);
	if (!pod) {
		pc_count(PC_CNT_CAPTURE_NOT_ENROLLED);
		return PC_TCX_NEXT;
	}
	if (!pc_port_captured(cookie, pod, pkt.dport)) {
		pc_count(PC_CNT_CAPTURE_UNCAPTURED);
		return PC_TCX_NEXT;
	}
	if (pkt.fragment) {
		/* bpf_sk_assign on a fragment would bypass reassembly. */
		pc_count(PC_CNT_CAPTURE_MALFORMED);
		return PC_TCX_DROP;
	}
	if (pkt.vlan) {
		/* TCP to a captured port behind VLAN tags (see pc_parse): not
		 * steered, since the stack would still have to strip the tags
		 * of an assigned skb, but dropped. Pods do not normally receive
		 * tagged frames. */
		pc_count(PC_CNT_CAPTURE_MALFORMED);
		return PC_TCX_DROP;
	}
	switch (pc_lookup_existing(skb, &pkt)) {
	case PC_EXISTING_SOCKET:
		pc_count(PC_CNT_CAPTURE_ESTABLISHED);
		return PC_TCX_NEXT;
	case PC_EXISTING_TIMEWAIT_SYN:
		pc_count(PC_CNT_CAPTURE_TIMEWAIT_SYN);
		return PC_TCX_DROP;
	case PC_EXISTING_NONE:
		break;
	}
	return pc_assign_listener(skb, &pkt);
}

#endif /* PC_CAPTURE_H */
