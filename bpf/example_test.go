package bpf_test

import (
	"context"
	"log"
	"net/netip"

	"github.com/portcullis-mesh/portcullis/bpf"
	"github.com/portcullis-mesh/portcullis/bpf/cgroupv2"
)

// The agent's life with the datapath: open (or re-adopt), listen in the pod,
// enrol it, name its callers, and look callers up on accept.
func Example() {
	d, err := bpf.Open(bpf.Config{}) // /sys/fs/bpf/portcullis/agent, port 15006, mark 0x504c
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close() // keeps capture in force while the agent is away

	const netnsPath = "/run/netns/pod-a"
	// The agent's listener: port 15006, marked so that capture knows it.
	ln, err := d.Listen(context.Background(), netnsPath, netip.Addr{})
	if err != nil {
		log.Fatal(err)
	}
	if err := d.Enroll(bpf.Pod{Key: "default/pod-a", NetnsPath: netnsPath, Ports: bpf.PortSpec{Ports: []uint16{8080}}}); err != nil {
		log.Fatal(err)
	}
	cg, err := cgroupv2.ID("/sys/fs/cgroup/kubepods.slice/pod-b")
	if err != nil {
		log.Fatal(err)
	}
	if err := d.RegisterIdentity(cg, 7); err != nil {
		log.Fatal(err)
	}
	c, err := ln.Accept()
	if err != nil {
		log.Fatal(err)
	}
	local := netip.MustParseAddrPort(c.LocalAddr().String()) // the original destination
	remote := netip.MustParseAddrPort(c.RemoteAddr().String())
	if id, ok := d.LookupConnection(local, remote); ok {
		log.Printf("caller is identity %d", id)
	}
}
