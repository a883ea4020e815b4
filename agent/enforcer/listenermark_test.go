package enforcer

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/portcullis-mesh/portcullis/bpf"
	"github.com/portcullis-mesh/portcullis/bpf/podnet"
)

// oddInterface creates a tun device in the netns, of a link type capture
// has no name for (ARPHRD_NETLINK, set with TUNSETLINK) and up: capture
// reads it with its L3 instance, as any non-Ethernet interface. It is
// deleted when the test ends (with its only file descriptor).
func oddInterface(t *testing.T, netnsPath string) {
	t.Helper()
	const name = "pcodd0"
	var tun *os.File
	err := podnet.Do(netnsPath, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		tun = os.NewFile(uintptr(fd), name)
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			return err
		}
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			return fmt.Errorf("TUNSETIFF: %w", err)
		}
		if err := unix.IoctlSetInt(fd, unix.TUNSETLINK, unix.ARPHRD_NETLINK); err != nil {
			return fmt.Errorf("TUNSETLINK: %w", err)
		}
		return nil
	})
	if tun != nil {
		t.Cleanup(func() { tun.Close() })
	}
	if err != nil {
		t.Fatal(err)
	}
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
}

// TestTooManyPortsCapturesEveryPort: the policies list more ports than the
// datapath holds for a pod (bpf.MaxPorts). Rather than leave the pod
// uncaptured, the Enforcer captures every port but the listener's: the
// listed ports are verified, and the enrolment does not fail. A policy
// within the limit captures the listed ports again.
func TestTooManyPortsCapturesEveryPort(t *testing.T) {
	ports := make([]string, bpf.MaxPorts+1)
	for i := range ports {
		ports[i] = fmt.Sprint(appPort + i)
	}
	f := newFixture(t)
	d := f.openDatapath()
	store := f.store(strings.Join(ports, ", "))
	e := f.newEnforcer(d, store)
	f.report(e, true)

	s := e.status(t)
	want := bpf.PortSpec{Mode: bpf.CaptureAllExcept, Ports: []uint16{d.ListenerPort()}}
	if !s.Enrolled || !s.Widened || s.Failures != 0 || s.LastError != "" {
		t.Errorf("got Enrolled %t, Widened %t, Failures %d, LastError %q; want enrolled, widened, without error", s.Enrolled, s.Widened, s.Failures, s.LastError)
	}
	if diff := cmp.Diff(want, s.Ports); diff != "" {
		t.Errorf("captured ports (-want +got):\n%s", diff)
	}
	if got := strings.Count(e.log.String(), "capturing every port"); got != 1 {
		t.Errorf("warnings about the widened capture: got %d, want 1", got)
	}
	f.checkVerified("with more ports than the datapath holds")

	// Back within the limit: the listed ports only.
	f.setPolicy(store, "orders", fmt.Sprint(appPort))
	e.PolicyChanged()
	s = e.status(t)
	want = bpf.PortSpec{Mode: bpf.CaptureListed, Ports: []uint16{appPort}}
	if diff := cmp.Diff(want, s.Ports); diff != "" || s.Widened {
		t.Errorf("after the policy lists one port: Widened %t, captured ports (-want +got):\n%s", s.Widened, diff)
	}
	f.checkVerified("after the policy lists one port")
}
