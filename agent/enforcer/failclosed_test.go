package enforcer

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/portcullis-mesh/portcullis/agent/authz"
	"github.com/portcullis-mesh/portcullis/agent/metrics"
	"github.com/portcullis-mesh/portcullis/bpf"
	"github.com/portcullis-mesh/portcullis/bpf/podnet"
	"github.com/portcullis-mesh/portcullis/bpf/testenv"
	"github.com/portcullis-mesh/portcullis/identity"
	"github.com/portcullis-mesh/portcullis/tokencheck"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// appPort is the port the test pods' app serves and the policies capture.
const appPort = 8080

// waitTimeout bounds every wait of these tests.
const waitTimeout = 10 * time.Second

// readersPolicy selects app=<app> and wants a token with a role on
// <ports>: a request without a token is refused with 401 by the verifier.
const readersPolicy = `apiVersion: portcullis.dev/v1alpha1
kind: AccessPolicy
metadata: {name: readers, namespace: shop}
spec:
  selector: {matchLabels: {app: %s}}
  rules:
  - to: {ports: [%s]}
    when: {roles: {anyOf: [Orders.Read]}}
`

// noTokens is a token validator for requests that carry no token.
type noTokens struct{}

func (noTokens) Validate(context.Context, string) (*tokencheck.Claims, tokencheck.Reason, error) {
	return nil, tokencheck.ReasonMalformed, errors.New("no tokens in this test")
}

// logBuffer collects an Enforcer's log; it may be written after the test
// ended (verifiers retire in the background), so it never calls t.Log.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *logBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *logBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// fixture is one pod serving appPort on a network of its own, and the pin
// directory of the datapaths a test opens for it.
type fixture struct {
	t      *testing.T
	pod    *testenv.Pod
	pinDir string
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	testenv.RequirePrivileged(t)
	n := testenv.NewNetwork(t)
	f := &fixture{
		t:   t,
		pod: n.NewPod(t, testenv.PodOptions{AppPorts: []uint16{appPort}}),
		pinDir: filepath.Join(bpf.BPFFSRoot, "portcullis",
			fmt.Sprintf("enforcer-%d-%s", os.Getpid(), strings.NewReplacer("/", "_").Replace(t.Name()))),
	}
	t.Cleanup(func() {
		if err := os.RemoveAll(f.pinDir); err != nil {
			t.Errorf("remove pin directory: %v", err)
		}
	})
	return f
}

// openDatapath opens (or re-adopts) the fixture's datapath. Unless the
// test closes it first, it is torn down when the test ends.
func (f *fixture) openDatapath() *bpf.Datapath {
	f.t.Helper()
	d, err := bpf.Open(bpf.Config{PinDir: f.pinDir})
	if err != nil {
		f.t.Fatalf("open datapath: %v", err)
	}
	f.t.Cleanup(func() { _ = d.Teardown() }) // an error after Close is expected
	return d
}

// store returns a policy store with readersPolicy for the pod (app=orders)
// on ports, or without a policy set when ports is empty.
func (f *fixture) store(ports string) *policy.Store {
	f.t.Helper()
	s := policy.NewStore()
	if ports != "" {
		f.setPolicy(s, "orders", ports)
	}
	return s
}

func (f *fixture) setPolicy(s *policy.Store, app, ports string) {
	f.t.Helper()
	objs, err := policy.Load("readers.yaml", fmt.Appendf(nil, readersPolicy, app, ports))
	if err != nil {
		f.t.Fatalf("load policy: %v", err)
	}
	if _, err := s.Update(objs); err != nil {
		f.t.Fatalf("compile policy: %v", err)
	}
}

// retry is one call of the Enforcer's retried hook.
type retry struct {
	key string
	err error
}

// enforcer is an Enforcer under test, with its metrics, log and retries.
type enforcer struct {
	*Enforcer
	metrics *metrics.Metrics
	log     *logBuffer
	retries chan retry
}

// newEnforcer returns an Enforcer over d and store with short retry
// delays. It is closed when the test ends, unless the test closes it.
func (f *fixture) newEnforcer(d *bpf.Datapath, store *policy.Store) *enforcer {
	f.t.Helper()
	e := &enforcer{metrics: metrics.New(metrics.BuildInfo{}), log: &logBuffer{}, retries: make(chan retry, 1024)}
	var err error
	e.Enforcer, err = New(Config{
		Datapath:        d,
		Engine:          authz.New(noTokens{}, store),
		RetryBackoff:    20 * time.Millisecond,
		MaxRetryBackoff: 100 * time.Millisecond,
		ShutdownGrace:   time.Second,
		Metrics:         e.metrics,
		Logger:          slog.New(slog.NewTextHandler(e.log, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		f.t.Fatal(err)
	}
	e.retried = func(key string, err error) {
		select {
		case e.retries <- retry{key, err}:
		default:
		}
	}
	f.t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = e.Close(ctx)
		if f.t.Failed() {
			f.t.Logf("enforcer log:\n%s", e.log.String())
		}
	})
	return e
}

// workload is the fixture's pod as a source reports it.
func (f *fixture) workload() identity.Workload {
	return identity.Workload{
		Namespace: "shop", Name: "orders", UID: "uid-orders", ServiceAccount: "orders",
		Labels: map[string]string{"app": "orders"}, IPs: []netip.Addr{f.pod.IPv4},
		NetnsPath: f.pod.NetnsPath, CgroupPath: f.pod.CgroupPath,
	}
}

const podKey = "shop/orders"

// report sends the pod (unless none) and the end of the initial list.
func (f *fixture) report(e *enforcer, pod bool) {
	if pod {
		e.Handle(identity.Event{Type: identity.EventAdded, Workload: f.workload()})
	}
	e.Handle(identity.Event{Type: identity.EventSynced})
}

// status returns the pod's WorkloadStatus.
func (e *enforcer) status(t *testing.T) WorkloadStatus {
	t.Helper()
	for _, s := range e.Workloads() {
		if s.Workload.Key() == podKey {
			return s
		}
	}
	t.Fatalf("workload %s not listed", podKey)
	return WorkloadStatus{}
}

// gauge reads a gauge of the Enforcer's metrics.
func (e *enforcer) gauge(t *testing.T, name string) float64 {
	t.Helper()
	mfs, err := e.metrics.Registry().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}

// waitRetry waits for a retry of the pod whose outcome ok accepts.
func (e *enforcer) waitRetry(t *testing.T, what string, ok func(error) bool) {
	t.Helper()
	timeout := time.NewTimer(waitTimeout)
	defer timeout.Stop()
	for {
		select {
		case r := <-e.retries:
			if r.key == podKey && ok(r.err) {
				return
			}
		case <-timeout.C:
			t.Fatalf("no retry %s within %v", what, waitTimeout)
		}
	}
}

// appAccepted returns how many connections the pod's app accepted.
func (f *fixture) appAccepted() int {
	f.t.Helper()
	n, err := f.pod.Accepted(appPort)
	if err != nil {
		f.t.Fatal(err)
	}
	return n
}

// checkClosed fails the test unless a new connection from the host to the
// pod's captured port is dropped: no connection is established and the app
// accepts none.
func (f *fixture) checkClosed(step string) {
	f.t.Helper()
	before := f.appAccepted()
	d := net.Dialer{Timeout: time.Second}
	c, err := d.Dial("tcp", netip.AddrPortFrom(f.pod.IPv4, appPort).String())
	if err == nil {
		c.Close()
		f.t.Errorf("%s: a connection to the captured port was established, want it dropped", step)
	}
	if after := f.appAccepted(); after != before {
		f.t.Errorf("%s: the app accepted %d connections, want none", step, after-before)
	}
}

// checkVerified fails the test unless a request without a token to the
// pod's captured port is refused by the verifier (401), not answered by
// the app.
func (f *fixture) checkVerified(step string) {
	f.t.Helper()
	before := f.appAccepted()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get("http://" + netip.AddrPortFrom(f.pod.IPv4, appPort).String() + "/")
	if err != nil {
		f.t.Fatalf("%s: GET without a token: %v", step, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		f.t.Errorf("%s: GET without a token: got %d, want 401", step, resp.StatusCode)
	}
	if after := f.appAccepted(); after != before {
		f.t.Errorf("%s: the app accepted %d connections, want none", step, after-before)
	}
}

// squat opens a listener on the agent's listener port in the pod, on
// loopback (an application's local admin port, say): the agent's own
// listener cannot be opened, and capture finds no listener for the pod's
// address.
func (f *fixture) squat(d *bpf.Datapath) net.Listener {
	f.t.Helper()
	ln, err := podnet.ListenTCP(context.Background(), f.pod.NetnsPath, fmt.Sprintf("127.0.0.1:%d", d.ListenerPort()))
	if err != nil {
		f.t.Fatalf("squat on the listener port: %v", err)
	}
	f.t.Cleanup(func() { ln.Close() })
	return ln
}

// enrolFirst runs an agent that enrols the pod, checks it is verified, and
// stops it keeping its pins, as an agent killed or restarted does.
func (f *fixture) enrolFirst() {
	f.t.Helper()
	d := f.openDatapath()
	e := f.newEnforcer(d, f.store(fmt.Sprint(appPort)))
	f.report(e, true)
	if s := e.status(f.t); !s.Enrolled {
		f.t.Fatalf("first agent: pod not enrolled: %+v", s)
	}
	f.checkVerified("first agent")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := e.Close(ctx); err != nil {
		f.t.Fatal(err)
	}
	if err := d.Close(); err != nil {
		f.t.Fatal(err)
	}
	f.checkClosed("no agent")
}

// TestEnrolFailureFailsClosedAndRetries: the pod's app already uses the
// listener port, so no listener can be opened in the pod. The captured port
// drops new connections instead of reaching the app, the failure is shown
// (last error, metric, one ERROR line), and the enrolment is retried until,
// once the port is free, requests are verified.
func TestEnrolFailureFailsClosedAndRetries(t *testing.T) {
	f := newFixture(t)
	d := f.openDatapath()
	squatter := f.squat(d)
	e := f.newEnforcer(d, f.store(fmt.Sprint(appPort)))
	f.report(e, true)

	s := e.status(t)
	if s.Enrolled || !s.Closed || s.Failures == 0 || !strings.Contains(s.LastError, "address already in use") {
		t.Errorf("while the port is taken: got Enrolled %t, Closed %t, Failures %d, LastError %q; want not enrolled, closed, failures and EADDRINUSE",
			s.Enrolled, s.Closed, s.Failures, s.LastError)
	}
	if strings.Contains(s.LastError, "a socket of the pod listens") {
		t.Errorf("LastError %q says capture hands connections to the pod's socket, which listens on loopback only", s.LastError)
	}
	if !d.Capturing(podKey) {
		t.Error("Capturing while enrolment fails: got false, want true")
	}
	f.checkClosed("while the port is taken")
	// Two more failed retries: the failure was logged at ERROR once.
	for range 2 {
		e.waitRetry(t, "that fails", func(err error) bool { return err != nil })
	}
	if got := e.gauge(t, "portcullis_agent_enrol_failed_pods"); got != 1 {
		t.Errorf("portcullis_agent_enrol_failed_pods while failing: got %v, want 1", got)
	}
	if got := strings.Count(e.log.String(), `level=ERROR msg="enrol workload"`); got != 1 {
		t.Errorf("ERROR lines for the failing enrolment: got %d, want 1", got)
	}

	squatter.Close()
	e.waitRetry(t, "that succeeds", func(err error) bool { return err == nil })
	s = e.status(t)
	if !s.Enrolled || s.Closed || s.Failures != 0 || s.LastError != "" {
		t.Errorf("after the port is freed: got Enrolled %t, Closed %t, Failures %d, LastError %q; want enrolled without error",
			s.Enrolled, s.Closed, s.Failures, s.LastError)
	}
	if got := e.gauge(t, "portcullis_agent_enrol_failed_pods"); got != 0 {
		t.Errorf("portcullis_agent_enrol_failed_pods after recovery: got %v, want 0", got)
	}
	if got := e.gauge(t, "portcullis_agent_enrolled_pods"); got != 1 {
		t.Errorf("portcullis_agent_enrolled_pods after recovery: got %v, want 1", got)
	}
	f.checkVerified("after the port is freed")
}

// TestAdoptedCaptureSurvivesFailedEnrol restarts the agent with a pod the
// previous one captured, and the new agent cannot enrol it: the capture it
// adopted stays, closed, through the failure and the end of the initial
// list (gc).
func TestAdoptedCaptureSurvivesFailedEnrol(t *testing.T) {
	for _, tc := range []struct {
		name  string
		squat bool
		// full: an interface of the pod whose TCX ingress is full makes
		// Enroll itself fail, after the listener and the verifier are up.
		full bool
	}{
		{name: "listen", squat: true},
		{name: "attach", full: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.enrolFirst()
			d := f.openDatapath()
			if tc.squat {
				f.squat(d)
			}
			if tc.full {
				fullTCX(t, f.pod.NetnsPath)
			}
			e := f.newEnforcer(d, f.store(fmt.Sprint(appPort)))
			f.report(e, true)
			s := e.status(t)
			if s.Enrolled || !s.Closed || s.LastError == "" {
				t.Errorf("got Enrolled %t, Closed %t, LastError %q; want a failing enrolment with capture kept", s.Enrolled, s.Closed, s.LastError)
			}
			if tc.full && !strings.Contains(s.LastError, "attach capture: ") {
				t.Errorf("LastError %q: want Enroll's error (attach capture: ...)", s.LastError)
			}
			if !d.Capturing(podKey) {
				t.Error("Capturing after the failed enrolment: got false, want true")
			}
			f.checkClosed("after the failed enrolment")
			e.waitRetry(t, "that fails", func(err error) bool { return err != nil })
			f.checkClosed("after a failed retry")
		})
	}
}

// TestGCWithoutPolicySet restarts the agent with a pod the previous one
// captured while no policy set is in force (the first one was refused, say):
// the end of the initial list removes nothing, and the first policy set
// then enrols the pod.
func TestGCWithoutPolicySet(t *testing.T) {
	f := newFixture(t)
	f.enrolFirst()
	d := f.openDatapath()
	store := f.store("")
	e := f.newEnforcer(d, store)
	f.report(e, true)
	if !d.Capturing(podKey) {
		t.Error("Capturing after sync without a policy set: got false, want true")
	}
	f.checkClosed("after sync without a policy set")

	f.setPolicy(store, "orders", fmt.Sprint(appPort))
	e.PolicyChanged()
	if s := e.status(t); !s.Enrolled {
		t.Errorf("after the first policy set: got %+v, want enrolled", s)
	}
	f.checkVerified("after the first policy set")
}

// TestGCRemovesStaleEnrolments: at the end of the initial list, capture a
// previous agent left is removed for a pod no source reports, and for one
// the policy set in force does not select; the app is reached directly.
func TestGCRemovesStaleEnrolments(t *testing.T) {
	for _, tc := range []struct {
		name     string
		reported bool
		app      string // selected by the policy set in force
	}{
		{name: "gone", reported: false, app: "orders"},
		{name: "not selected", reported: true, app: "payments"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.enrolFirst()
			d := f.openDatapath()
			store := policy.NewStore()
			f.setPolicy(store, tc.app, fmt.Sprint(appPort))
			e := f.newEnforcer(d, store)
			f.report(e, tc.reported)
			if d.Capturing(podKey) {
				t.Error("Capturing after sync: got true, want false")
			}
			before := f.appAccepted()
			c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
			resp, err := c.Get("http://" + netip.AddrPortFrom(f.pod.IPv4, appPort).String() + "/")
			if err != nil {
				t.Fatalf("GET: %v", err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK || f.appAccepted() != before+1 {
				t.Errorf("GET: got %d with %d connections accepted by the app, want 200 from the app", resp.StatusCode, f.appAccepted()-before)
			}
		})
	}
}

func TestRetryBackoff(t *testing.T) {
	// The defaults New sets: 1s, doubling up to 30s.
	e := &Enforcer{cfg: Config{RetryBackoff: time.Second, MaxRetryBackoff: 30 * time.Second}}
	var got []time.Duration
	for _, n := range []int{1, 2, 3, 4, 5, 6, 7, 1000} {
		got = append(got, e.backoff(n))
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second, 30 * time.Second}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("backoff for attempts 1..7 and 1000 (-want +got):\n%s", diff)
	}
}

// TestEnrolWaitsForSync: during the initial list, workloads' identities are
// registered but no pod is enrolled, so that once pods take connections
// every caller already listed is known by its own identity number (not
// one a previous agent gave to another).
func TestEnrolWaitsForSync(t *testing.T) {
	f := newFixture(t)
	d := f.openDatapath()
	e := f.newEnforcer(d, f.store(fmt.Sprint(appPort)))
	e.Handle(identity.Event{Type: identity.EventAdded, Workload: f.workload()})
	s := e.status(t)
	ids, err := d.Identities()
	if err != nil {
		t.Fatal(err)
	}
	if s.ID == 0 || ids[f.pod.CgroupID] != uint32(s.ID) {
		t.Errorf("before sync: cgroup %d registered as %d, want the workload's identity %d", f.pod.CgroupID, ids[f.pod.CgroupID], s.ID)
	}
	if s.Enrolled || d.Capturing(podKey) {
		t.Errorf("before sync: got Enrolled %t, Capturing %t; want neither", s.Enrolled, d.Capturing(podKey))
	}
	e.Handle(identity.Event{Type: identity.EventSynced})
	if s := e.status(t); !s.Enrolled {
		t.Errorf("after sync: got %+v, want enrolled", s)
	}
	f.checkVerified("after sync")
}

// TestDatapathErrorReattaches: an error the datapath reports for an enrolled
// pod (its interface watcher) makes the workload fail until capture is
// attached again, which a retry does. Capture is detached behind the
// enforcer's back first: only the retry's Enroll attaches it again.
func TestDatapathErrorReattaches(t *testing.T) {
	f := newFixture(t)
	d := f.openDatapath()
	e := f.newEnforcer(d, f.store(fmt.Sprint(appPort)))
	f.report(e, true)
	detachBehindBack(t, f.pinDir)
	e.DatapathError(podKey, errors.New("interface eth0: attach tcx: device busy"))
	e.waitRetry(t, "that succeeds", func(err error) bool { return err == nil })
	if s := e.status(t); !s.Enrolled || s.Failures != 0 || s.LastError != "" {
		t.Errorf("after the retry: got Enrolled %t, Failures %d, LastError %q; want enrolled without error", s.Enrolled, s.Failures, s.LastError)
	}
	if got := strings.Count(e.log.String(), `level=ERROR msg="capture pod interfaces"`); got != 1 {
		t.Errorf("ERROR lines for the datapath error: got %d, want 1", got)
	}
	f.checkVerified("after the retry")
}

// TestListenerPortHeldByApp: the pod's app listens on the listener port
// for every address (the pod's included), so the agent cannot open its
// listener there. Capture, attached to fail closed, finds the app's socket
// and refuses it, since it is not the agent's: new connections to captured
// ports are dropped, the app's socket accepts none, and the workload's
// error names the socket that holds the port.
func TestListenerPortHeldByApp(t *testing.T) {
	f := newFixture(t)
	d := f.openDatapath()
	ln, err := podnet.ListenTCP(context.Background(), f.pod.NetnsPath, fmt.Sprintf(":%d", d.ListenerPort()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	e := f.newEnforcer(d, f.store(fmt.Sprint(appPort)))
	f.report(e, true)
	want := fmt.Sprintf("a socket of the pod listens on %s, the agent's listener port: new connections to captured ports are dropped until it is closed",
		netip.AddrPortFrom(f.pod.IPv4, d.ListenerPort()))
	s := e.status(t)
	if !strings.Contains(s.LastError, want) {
		t.Errorf("LastError: got %q, want it to contain %q", s.LastError, want)
	}
	if s.Enrolled || !s.Closed {
		t.Errorf("got Enrolled %t, Closed %t; want capture closed", s.Enrolled, s.Closed)
	}
	f.checkClosed("while the app holds the listener port")
	// Not time.Now(): Accept would fail on the past deadline without
	// looking at the queue. Any connection is queued by now.
	if err := ln.(*net.TCPListener).SetDeadline(time.Now().Add(100 * time.Millisecond)); err != nil {
		t.Fatal(err)
	}
	if c, err := ln.Accept(); err == nil {
		c.Close()
		t.Errorf("the app's socket on the listener port accepted a connection from %s to %s, want none", c.RemoteAddr(), c.LocalAddr())
	} else if !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("accept on the app's socket: %v", err)
	}
}
