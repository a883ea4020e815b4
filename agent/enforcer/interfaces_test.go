package enforcer

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/portcullis-mesh/portcullis/bpf"
	"github.com/portcullis-mesh/portcullis/bpf/podnet"
	"github.com/portcullis-mesh/portcullis/bpf/testenv"
)

// TestPodWithUnknownLinkTypeIsVerified: a pod with an interface up of a
// link type capture has no name for (IPoIB, nlmon, ...) is enrolled, new or
// adopted from a previous agent, and its captured port is verified. Before,
// Enroll refused such a pod with nothing attached, and a new pod stayed
// open.
func TestPodWithUnknownLinkTypeIsVerified(t *testing.T) {
	for _, adopted := range []bool{false, true} {
		t.Run(fmt.Sprintf("adopted=%t", adopted), func(t *testing.T) {
			f := newFixture(t)
			if adopted {
				f.enrolFirst()
			}
			d := f.openDatapath()
			oddInterface(t, f.pod.NetnsPath)
			e := f.newEnforcer(d, f.store(fmt.Sprint(appPort)))
			f.report(e, true)
			if s := e.status(t); !s.Enrolled || s.Failures != 0 || s.LastError != "" {
				t.Errorf("got Enrolled %t, Failures %d, LastError %q; want enrolled without error", s.Enrolled, s.Failures, s.LastError)
			}
			if got := len(podIfindexes(t, d)); got != 2 {
				t.Errorf("captured interfaces: got %d, want 2 (eth0 and the odd one)", got)
			}
			f.checkVerified("pod with an interface of an unknown link type")
		})
	}
}

// TestAttachErrorLeavesPodClosed: capture cannot be attached to one of the
// pod's interfaces (its TCX ingress is full), the first one Enroll tries
// (lowest ifindex). The others are attached all the same, so the pod is
// closed, not open, while the enrolment fails; it is verified once a retry
// can attach.
func TestAttachErrorLeavesPodClosed(t *testing.T) {
	testenv.RequirePrivileged(t)
	f := newFixture(t)
	f.pod = testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{AppPorts: []uint16{appPort}, NoInterface: true})
	release := fullTCX(t, f.pod.NetnsPath)
	f.pod.AddInterface(t)
	d := f.openDatapath()
	e := f.newEnforcer(d, f.store(fmt.Sprint(appPort)))
	f.report(e, true)
	s := e.status(t)
	if s.Enrolled || !s.Closed || s.LastError == "" {
		t.Errorf("got Enrolled %t, Closed %t, LastError %q; want a failing enrolment, closed", s.Enrolled, s.Closed, s.LastError)
	}
	f.checkClosed("one interface cannot be attached")
	release()
	e.waitRetry(t, "that succeeds", func(err error) bool { return err == nil })
	if s := e.status(t); !s.Enrolled || s.LastError != "" {
		t.Errorf("after the retry: got Enrolled %t, LastError %q; want enrolled", s.Enrolled, s.LastError)
	}
	f.checkVerified("after the retry")
}

// TestLoOnlyPodFailingListenIsClosed: a pod with lo only (its CNI plugin
// has not run yet) whose listener cannot be opened is enrolled in the
// datapath without links. Its status says closed: capture attaches to its
// interface as soon as it appears and drops new connections without a
// listener.
func TestLoOnlyPodFailingListenIsClosed(t *testing.T) {
	testenv.RequirePrivileged(t)
	f := newFixture(t)
	f.pod = testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{AppPorts: []uint16{appPort}, NoInterface: true})
	d := f.openDatapath()
	f.squat(d)
	e := f.newEnforcer(d, f.store(fmt.Sprint(appPort)))
	f.report(e, true)
	s := e.status(t)
	if s.Enrolled || !s.Closed || s.LastError == "" {
		t.Errorf("got Enrolled %t, Closed %t, LastError %q; want a failing enrolment, closed", s.Enrolled, s.Closed, s.LastError)
	}
	if d.Capturing(podKey) {
		t.Error("Capturing: got true, want false (no interface yet)")
	}
}

// podIfindexes returns the interfaces the datapath captures for the pod.
func podIfindexes(t *testing.T, d *bpf.Datapath) []int {
	t.Helper()
	pods, err := d.Pods()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods {
		if p.Key == podKey {
			return p.Ifindexes
		}
	}
	return nil
}

// mprogMax bounds how many programs fullTCX attaches: a TCX hook holds
// fewer (BPF_MPROG_MAX less one, 63, on 6.18) and refuses more with ERANGE.
const mprogMax = 64

// fullTCX creates an interface (tun) in the netns, up, whose TCX ingress holds as
// many programs as it can, so that attaching capture there fails. The
// returned function detaches them; everything goes when the test ends.
func fullTCX(t *testing.T, netnsPath string) (release func()) {
	t.Helper()
	const name = "pcfull0"
	testenv.Tun(t, netnsPath, name, -1)
	l := testenv.SetLinkUp(t, netnsPath, name)
	var links []link.Link
	release = func() {
		for _, l := range links {
			l.Close()
		}
		links = nil
	}
	t.Cleanup(release)
	for i := range mprogMax {
		prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name: fmt.Sprintf("pcfull%d", i),
			Type: ebpf.SchedCLS,
			Instructions: asm.Instructions{
				asm.Mov.Imm(asm.R0, -1), // TCX_NEXT
				asm.Return(),
			},
			License: "GPL",
		})
		if err != nil {
			t.Fatal(err)
		}
		err = podnet.Do(netnsPath, func() error {
			tl, err := link.AttachTCX(link.TCXOptions{Interface: l.Attrs().Index, Program: prog, Attach: ebpf.AttachTCXIngress})
			if err == nil {
				links = append(links, tl)
			}
			return err
		})
		prog.Close() // the link holds it
		if errors.Is(err, unix.ERANGE) && i > 0 {
			return release // full
		}
		if err != nil {
			t.Fatalf("attach program %d to %s: %v", i, name, err)
		}
	}
	t.Fatalf("TCX ingress of %s took %d programs without refusing one", name, mprogMax)
	return release
}

// detachBehindBack detaches the pod's capture link on its first interface
// through its pin, as something else on the node could: the datapath still
// holds the link, now defunct.
func detachBehindBack(t *testing.T, pinDir string) {
	t.Helper()
	pins, err := filepath.Glob(filepath.Join(pinDir, "pods", "*", "tcx_*"))
	if err != nil || len(pins) == 0 {
		t.Fatalf("capture link pins: %v %v", pins, err)
	}
	l, err := link.LoadPinnedLink(pins[0], nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if err := l.Detach(); err != nil {
		t.Fatalf("detach %s: %v", pins[0], err)
	}
}
