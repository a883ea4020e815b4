package enforcer

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/portcullis-mesh/portcullis/bpf"
	"github.com/portcullis-mesh/portcullis/bpf/testenv"
)

// oddInterface creates a tun device in the netns, of a link type capture
// has no name for (ARPHRD_NETLINK, set with TUNSETLINK) and up: capture
// reads it with its L3 instance, as any non-Ethernet interface. It is
// deleted when the test ends (with its only file descriptor).
func oddInterface(t *testing.T, netnsPath string) {
	t.Helper()
	const name = "pcodd0"
	testenv.Tun(t, netnsPath, name, unix.ARPHRD_NETLINK)
	testenv.SetLinkUp(t, netnsPath, name)
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
