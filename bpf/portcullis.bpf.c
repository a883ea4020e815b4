//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Portcullis datapath entry points. The logic lives in lib/ so that test
 * programs can include it. */

#include "lib/common.h"
#include "lib/capture.h"
#include "lib/sockops.h"
#include "lib/accel.h"

char __license[] SEC("license") = "Dual BSD/GPL";

/* pc_capture_in runs at TCX ingress of a pod's interfaces, inside the pod's
 * netns: new connections to captured ports go to the agent's listener. */
SEC("tcx/ingress")
int pc_capture_in(struct __sk_buff *skb)
{
	return pc_capture(skb);
}

/* pc_sockops runs for every TCP socket below the cgroup it is attached to
 * (the cgroup v2 root by default). */
SEC("sockops")
int pc_sockops(struct bpf_sock_ops *ops)
{
	switch (ops->op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		pc_sockops_connect(ops);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		pc_accel_active(ops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		pc_accel_passive(ops);
		break;
	case BPF_SOCK_OPS_STATE_CB:
		pc_sockops_state(ops);
		pc_accel_closed(ops);
		break;
	}
	return 1;
}

/* pc_accel_msg_verdict runs for every message sent on a socket in pc_socks
 * (local acceleration, see lib/accel.h). Loaded only when enabled. */
SEC("sk_msg")
int pc_accel_msg_verdict(struct sk_msg_md *msg)
{
	return pc_accel_msg(msg);
}
