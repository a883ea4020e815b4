// Package bpf is the Portcullis eBPF datapath and its Go loader.
//
// Two programs do the work (C sources in this directory, lib/ holds the
// logic, bpf2go output committed next to them):
//
//   - pc_capture_in, a TCX ingress program on a pod's interfaces inside the
//     pod's network namespace. A TCP packet to a captured port that belongs
//     to no existing socket is bpf_sk_assign'ed to the agent's listener on
//     Config.ListenerPort in that namespace; the accepted socket's local
//     address is the original destination. Only a listener flagged by
//     Datapath.Listen (a BPF socket storage map) is the agent's:
//     with no listener, or with another socket on that port (the pod's
//     own application), the packet is dropped: a captured port is never
//     reachable unverified.
//   - pc_sockops, a sockops program on the cgroup v2 root, records for every
//     TCP connection opened by a process of a registered cgroup (or of a
//     descendant) the connection's 4-tuple -> identity ID, and forgets it
//     when the socket closes. LookupConnection answers "who called?".
//
// Open loads the programs, or re-adopts the ones a previous agent pinned
// under Config.PinDir: maps keep their contents and existing links are
// switched to the new programs, so a restart neither opens a gap nor
// attaches twice. The identity maps (pc_cgroups, pc_conns) are the
// exception: they are emptied, because identity numbers belong to one agent
// run; callers are anonymous until the agent registers them again. Close releases the agent's handles and keeps the pins, so
// capture stays in force (fail closed) while no agent runs; Teardown
// removes everything.
//
// The capture program is loaded once per pod, with the pod's netns cookie as
// a load-time constant: at TCX ingress a program cannot learn its netns
// (bpf_get_netns_cookie names the skb's socket's netns, init_net before
// socket lookup). A pod with interfaces without an Ethernet header (tun,
// wireguard, IP tunnels, including the kernel's fallback tunnels tunl0,
// sit0, gre0, ip6tnl0) gets a second instance for them, which reads
// headers from the network header (load-time constant pc_l3_dev). Every
// instance shares the same maps.
//
// Enroll attaches capture to the pod's interfaces, then a watcher
// subscribed to the pod's netns link events attaches it to interfaces that
// appear later and forgets those that go, until Remove or Close. Its
// errors go to Config.OnError and PodInfo.WatchErr. Pods re-adopted by
// Open have no watcher until they are enrolled again.
//
// Pin layout below Config.PinDir (default /sys/fs/bpf/portcullis/agent):
//
//	map_pc_pods, map_pc_ports, map_pc_cgroups, map_pc_conns, map_pc_counters
//	prog_sockops, link_sockops
//	pods/<netns cookie>/tcx_<ifindex>   one TCX link per captured Ethernet interface
//	pods/<netns cookie>/tcxl3_<ifindex> one per interface without an Ethernet header
//
// Map sizes (lib/*.h has the reasoning): pc_pods 1024 pods, pc_ports 32768
// (64 ports per pod for 256 pods, twice during an update), pc_cgroups 4096,
// pc_conns 131072 connections (LRU, for 100k concurrent), pc_counters one
// per-CPU slot per Counter.
//
// Identity IDs are plain uint32 here; 0 means "none". The package imports
// nothing else of Portcullis.
package bpf
