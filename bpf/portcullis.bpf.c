//go:build ignore
// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* Portcullis datapath entry points. The logic lives in lib/ so that test
 * programs can include it. */

#include "lib/common.h"
#include "lib/capture.h"
#include "lib/sockops.h"

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
	case BPF_SOCK_OPS_STATE_CB:
		pc_sockops_state(ops);
		break;
	}
	return 1;
}
