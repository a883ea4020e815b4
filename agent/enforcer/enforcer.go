// Package enforcer keeps the node's datapath in step with its workloads and
// the policy set: it registers every local workload's cgroup with its
// identity, and for each workload a policy selects it opens the verifier's
// listener inside the pod's network namespace and then attaches capture for
// the selected ports. It consumes identity events and policy-set changes;
// it is the only place where the datapath, identities and verifiers meet.
//
// Enrolment fails closed: when the listener or the verifier cannot be set
// up, capture is attached anyway (or, re-adopted from a previous agent,
// kept), so that new connections to the captured ports are dropped rather
// than reach the application unchecked, and the enrolment is retried with
// backoff until it succeeds. Capture is removed only when a source no
// longer reports the pod or the policy set in force no longer selects it.
package enforcer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portcullis-mesh/portcullis/agent/audit"
	"github.com/portcullis-mesh/portcullis/agent/authz"
	"github.com/portcullis-mesh/portcullis/agent/metrics"
	"github.com/portcullis-mesh/portcullis/agent/verifier"
	"github.com/portcullis-mesh/portcullis/bpf"
	"github.com/portcullis-mesh/portcullis/bpf/cgroupv2"
	"github.com/portcullis-mesh/portcullis/bpf/podnet"
	"github.com/portcullis-mesh/portcullis/identity"
	"github.com/portcullis-mesh/portcullis/identity/idalloc"
	"github.com/portcullis-mesh/portcullis/identity/ipcache"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
)

// Config configures an Enforcer.
type Config struct {
	// Datapath is the opened datapath. Required.
	Datapath *bpf.Datapath
	// Engine decides requests. Required.
	Engine *authz.Engine
	// TrustDomain names identities. Empty means identity.DefaultTrustDomain.
	TrustDomain string
	// IPCache resolves callers the datapath does not know (other nodes).
	// Nil means an empty cache owned by the Enforcer.
	IPCache *ipcache.Cache
	// Verifier is the template of every pod's verifier configuration;
	// Workload, Authorizer, L4Authorizer, Sources, Dialer and StripHeaders
	// are filled per pod, and NoSplice set for locally accelerated pods.
	Verifier verifier.Config
	// LocalAcceleration is the node's default for workloads that state no
	// choice of their own (identity.Workload.LocalAcceleration). A workload
	// is accelerated only when Datapath was opened with an AccelMark. Zero:
	// only workloads that choose it are accelerated.
	LocalAcceleration bool
	// KeepPreexisting leaves alone the connections an application accepted
	// before capture covered their port. Zero: they are reset when capture
	// starts (podnet.ResetInbound), so no connection to a captured port
	// outlives enrolment unchecked; clients reconnect through the verifier.
	KeepPreexisting bool
	// ShutdownGrace bounds how long a pod's in-flight requests may finish
	// when it is unenrolled or its verifier replaced. Zero means 10s.
	ShutdownGrace time.Duration
	// RetryBackoff is the delay before a failed enrolment is tried again;
	// it doubles with each further failure, up to MaxRetryBackoff, and
	// starts over after a success. Zero means 1s.
	RetryBackoff time.Duration
	// MaxRetryBackoff caps the delay between retries of a failing
	// enrolment. Zero means 30s.
	MaxRetryBackoff time.Duration
	// Audit receives decisions; Metrics counts them. Nil means none.
	Audit   *audit.Logger
	Metrics *metrics.Metrics
	// Logger receives enrolment changes. Nil means discard.
	Logger *slog.Logger
}

// Enforcer is safe for concurrent use: identity events and policy changes
// may arrive from different goroutines.
type Enforcer struct {
	cfg Config
	dp  *bpf.Datapath
	// progress counts reconciled workloads (Progress), without e.mu.
	progress atomic.Uint64
	log      *slog.Logger
	ids      *idalloc.Allocator
	ipc      *ipcache.Cache

	// sources maps identity IDs to the caller identity they stand for; read
	// on every accepted connection.
	sources sync.Map // identity.ID → identity.Source

	mu        sync.Mutex
	workloads map[string]*workload // by key
	synced    bool
	closed    bool

	// gcPending: the workload source synced while no policy set was in
	// force, so stale enrolments wait for the first one (gcLocked).
	gcPending bool

	// closing is closed by Close: replaced verifiers still waiting to be
	// retired (retiring) are retired at once.
	closing  chan struct{}
	retiring sync.WaitGroup

	// retried, when set (tests), is called under mu after every retry of
	// a failing enrolment with the workload's key and the retry's error.
	retried func(key string, err error)
}

// workload is one local pod's state.
type workload struct {
	w         identity.Workload
	excl      identity.Exclusion
	nsEnforce bool
	cgroupID  uint64
	id        identity.ID
	policyW   atomic.Pointer[authz.Workload]
	// enrolled state (nil when no verifier serves the pod)
	pod *enrolled
	// ports are the captured ports: served by pod, or, while enrolment
	// fails, dropped by capture attached without a verifier (closed).
	ports bpf.PortSpec
	// closed: the pod is enrolled in the datapath (by this agent or a
	// previous one; bpf.Datapath.Enrolled) but no verifier serves it, so
	// new connections to ports are dropped, also on interfaces that
	// appear later.
	closed bool
	err    error // last enrolment error, for the debug API
	regErr error // identity registration error, for the debug API
	// failures counts consecutive failed enrolment attempts; while it is
	// not zero, retry is armed. retryGen tells a stale timer from retry.
	failures int
	retry    *time.Timer
	retryGen uint64
	// reattach: the datapath reported an error for the enrolled pod
	// (DatapathError); its capture is to be attached again.
	reattach bool
	// widened: the policies list more ports than the datapath holds for a
	// pod, so every port is captured (capturePlan); logged on change.
	widened bool
}

type enrolled struct {
	acc      *acceptor // the listener in the pod's netns
	since    time.Time
	netnsKey string
	*podVerifier
}

// podVerifier is a verifier serving a pod: the one in charge, or one being
// replaced that finishes its connections.
type podVerifier struct {
	srv    *verifier.Server
	dialer *podnet.Dialer
	accel  bool            // its upstream connections are locally accelerated
	view   *view           // its listener
	served <-chan struct{} // closed when srv.Serve(view) has returned
}

// New returns an Enforcer. It adopts nothing yet: pods a previous agent left
// enrolled stay captured (and closed) until they are enrolled again, which
// waits for EventSynced, or until, with EventSynced and a policy set in
// force, GC removes those that are gone or not selected.
func New(cfg Config) (*Enforcer, error) {
	if cfg.Datapath == nil || cfg.Engine == nil {
		return nil, errors.New("enforcer: Datapath and Engine are required")
	}
	if cfg.TrustDomain == "" {
		cfg.TrustDomain = identity.DefaultTrustDomain
	}
	if cfg.ShutdownGrace == 0 {
		cfg.ShutdownGrace = 10 * time.Second
	}
	if cfg.RetryBackoff == 0 {
		cfg.RetryBackoff = time.Second
	}
	if cfg.MaxRetryBackoff == 0 {
		cfg.MaxRetryBackoff = 30 * time.Second
	}
	if cfg.IPCache == nil {
		cfg.IPCache = &ipcache.Cache{}
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	ids, err := idalloc.New(idalloc.Config{})
	if err != nil {
		return nil, fmt.Errorf("identity allocator: %w", err)
	}
	return &Enforcer{cfg: cfg, dp: cfg.Datapath, log: log, ids: ids, ipc: cfg.IPCache, workloads: map[string]*workload{},
		closing: make(chan struct{})}, nil
}

// Resolve tells who opened a connection the verifier accepted: the
// datapath's socket record for callers on this node, else the IP cache,
// else anonymous.
func (e *Enforcer) Resolve(local, remote netip.AddrPort) identity.Source {
	if id, ok := e.dp.LookupConnection(local, remote); ok {
		if s, ok := e.sources.Load(identity.ID(id)); ok {
			return s.(identity.Source)
		}
	}
	if s, ok := e.ipc.Lookup(remote.Addr().Unmap()); ok {
		return s
	}
	return identity.AnonymousSource
}

// Handle consumes one identity event. It is an identity.Handler.
func (e *Enforcer) Handle(ev identity.Event) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return
	}
	switch ev.Type {
	case identity.EventAdded, identity.EventUpdated:
		e.upsertLocked(ev)
	case identity.EventRemoved:
		e.removeLocked(ev.Workload.Key())
	case identity.EventSynced:
		// Every workload's identity is registered by now: enrolment waits
		// for this, so that no pod takes connections while callers that
		// were reported later are still unknown (or known by a number the
		// previous agent gave them).
		e.synced = true
		for _, key := range slices.Sorted(maps.Keys(e.workloads)) {
			e.syncLocked(e.workloads[key])
		}
		e.gcLocked()
	}
}

// PolicyChanged re-evaluates which workloads and ports are captured. Call it
// after every swap of the policy set.
func (e *Enforcer) PolicyChanged() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed || !e.synced {
		return // Synced reconciles every workload
	}
	for _, w := range e.workloads {
		e.reconcileLocked(w)
	}
	if e.gcPending {
		e.gcLocked()
	}
}

func (e *Enforcer) upsertLocked(ev identity.Event) {
	key := ev.Workload.Key()
	w := e.workloads[key]
	if w == nil {
		w = &workload{}
		e.workloads[key] = w
	}
	old := w.w
	w.w, w.excl, w.nsEnforce = ev.Workload, ev.Exclusion, ev.NamespaceEnforced
	w.policyW.Store(&authz.Workload{Key: key, Policy: policy.Workload{Namespace: w.w.Namespace, Labels: w.w.Labels}, NamespaceEnforced: ev.NamespaceEnforced})

	src := w.w.Source(e.cfg.TrustDomain)
	if len(w.w.IPs) > 0 {
		e.ipc.Upsert(key, w.w.IPs, src)
	} else {
		e.ipc.Delete(key)
	}
	// Identity: (re)register the cgroup when it or the identity changed.
	if w.w.CgroupPath != old.CgroupPath || src.ID != old.Source(e.cfg.TrustDomain).ID || w.id == 0 {
		e.unregisterLocked(w, old)
		w.regErr = e.registerLocked(w, src)
		if w.regErr != nil {
			e.log.Warn("register workload identity", "workload", key, "error", w.regErr)
		}
	} else {
		e.sources.Store(w.id, src) // client ID may have changed
	}
	// A new network namespace (sandbox restart) needs a new listener.
	if w.pod != nil && w.pod.netnsKey != w.w.NetnsPath {
		e.unenrollLocked(w)
	}
	if e.synced {
		e.syncLocked(w)
	}
}

// syncLocked brings w's capture and verifier in line with its workload and
// the policy set in force.
func (e *Enforcer) syncLocked(w *workload) {
	e.reconcileLocked(w)
	// The verifier's dialer and splicing follow local acceleration: a
	// change needs a new verifier, on the same listener.
	if w.pod != nil && w.pod.accel != e.accelerated(w) {
		e.replaceVerifierLocked(w)
	}
}

// accelerated says whether w's upstream connections are to be locally
// accelerated now.
func (e *Enforcer) accelerated(w *workload) bool {
	return accelerate(e.dp.AccelMark(), e.cfg.LocalAcceleration, w.w.LocalAcceleration)
}

// accelerate resolves a workload's choice against the node's default; no
// workload is accelerated by a datapath opened without a mark.
func accelerate(mark uint32, nodeDefault bool, choice identity.Acceleration) bool {
	return mark != 0 && choice.Enabled(nodeDefault)
}

func (e *Enforcer) registerLocked(w *workload, src identity.Source) error {
	id, err := e.ids.Acquire(src.ID)
	if err != nil {
		return fmt.Errorf("allocate identity for %s: %w", src.ID, err)
	}
	w.id = id
	e.sources.Store(id, src)
	if w.w.CgroupPath == "" {
		return nil
	}
	cg, err := cgroupv2.ID(w.w.CgroupPath)
	if err != nil {
		return fmt.Errorf("cgroup of %s: %w", w.w.Key(), err)
	}
	if err := e.dp.RegisterIdentity(cg, uint32(id)); err != nil {
		return fmt.Errorf("register cgroup %s: %w", w.w.CgroupPath, err)
	}
	w.cgroupID = cg
	return nil
}

func (e *Enforcer) unregisterLocked(w *workload, old identity.Workload) {
	if w.cgroupID != 0 {
		if err := e.dp.UnregisterIdentity(w.cgroupID); err != nil {
			e.log.Warn("unregister cgroup", "workload", old.Key(), "error", err)
		}
		w.cgroupID = 0
	}
	if w.id != 0 {
		name := old.SPIFFEID(e.cfg.TrustDomain)
		if e.ids.Release(name) {
			e.sources.Delete(w.id)
		}
		w.id = 0
	}
}

func (e *Enforcer) removeLocked(key string) {
	w := e.workloads[key]
	if w == nil {
		return
	}
	// The pod is gone: whatever capture it had goes too, also one kept
	// closed while its enrolment failed or re-adopted from a previous
	// agent.
	if w.pod != nil {
		e.unenrollLocked(w)
	} else {
		e.releaseLocked(w)
	}
	e.clearFailureLocked(w)
	e.unregisterLocked(w, w.w)
	e.ipc.Delete(key)
	delete(e.workloads, key)
	e.setMetricsLocked()
}

// gcLocked removes the datapath state of pods, enrolled by a previous
// agent, that no source reports any more or that the policy set in force
// does not select. While no policy set is in force it removes nothing
// (and runs again with the first one): it cannot tell which pods are
// selected, and removing capture fails open. Pods whose enrolment is
// failing are selected, so their capture stays (closed).
func (e *Enforcer) gcLocked() {
	if e.cfg.Engine.Set() == nil {
		if !e.gcPending {
			e.log.Warn("no policy set in force; enrolments of a previous agent are kept until one is")
		}
		e.gcPending = true
		return
	}
	e.gcPending = false
	pods, err := e.dp.Pods()
	if err != nil {
		e.log.Warn("list enrolled pods", "error", err)
		return
	}
	for _, p := range pods {
		w := e.workloads[p.Key]
		if w != nil {
			if want, _ := e.captureFor(w); want || w.pod != nil {
				continue
			}
		}
		if err := e.dp.Remove(p.Key); err != nil {
			e.log.Warn("remove stale pod", "workload", p.Key, "error", err)
			continue
		}
		if w != nil {
			w.closed, w.ports = false, bpf.PortSpec{}
		}
		e.log.Info("removed stale enrolment", "workload", p.Key)
	}
}

// captureFor says which ports of w are captured under the policy set in force.
func (e *Enforcer) captureFor(w *workload) (bool, bpf.PortSpec) {
	want, ports, _ := e.capturePlan(w)
	return want, ports
}

// capturePlan is captureFor, and says whether the policies list more ports
// than the datapath holds for a pod (bpf.MaxPorts, with the listener port
// left out): every port but the listener's is captured instead (widened),
// so that none of the listed ports stays open. The other ports then go
// through the verifier too: HTTP to them is let through as not captured
// (unless the namespace enforces by default), and anything else is refused
// unless the port is a passthrough port; the workload's ports show it.
func (e *Enforcer) capturePlan(w *workload) (want bool, ports bpf.PortSpec, widened bool) {
	if w.excl != identity.NotExcluded || w.w.NetnsPath == "" {
		return false, bpf.PortSpec{}, false
	}
	listener := e.dp.ListenerPort()
	all := bpf.PortSpec{Mode: bpf.CaptureAllExcept, Ports: []uint16{listener}}
	set := e.cfg.Engine.Set()
	var c policy.Capture
	if set != nil {
		c = set.Capture(policy.Workload{Namespace: w.w.Namespace, Labels: w.w.Labels})
	}
	switch {
	case c.Selected && c.AllPorts, !c.Selected && w.nsEnforce:
		return true, all, false
	case c.Selected:
		ports := slices.DeleteFunc(slices.Clone(c.Ports), func(p uint16) bool { return p == listener })
		if len(ports) == 0 {
			return false, bpf.PortSpec{}, false
		}
		if len(ports) > bpf.MaxPorts {
			return true, all, true
		}
		return true, bpf.PortSpec{Mode: bpf.CaptureListed, Ports: ports}, false
	}
	return false, bpf.PortSpec{}, false
}

func (e *Enforcer) reconcileLocked(w *workload) {
	want, ports, widened := e.capturePlan(w)
	if widened != w.widened {
		w.widened = widened
		if widened {
			e.log.Warn("policies list more ports than the datapath holds for a pod; capturing every port", "workload", w.w.Key(), "max_ports", bpf.MaxPorts)
		}
	}
	switch {
	case !want:
		if w.pod != nil {
			e.unenrollLocked(w)
		} else if e.cfg.Engine.Set() != nil {
			// Capture kept closed for a failing enrolment, or re-adopted,
			// that the policy set in force no longer wants. Without a
			// set, nothing is known to be unwanted: it stays.
			e.releaseLocked(w)
		}
		e.clearFailureLocked(w)
	case w.pod == nil:
		e.noteAttemptLocked(w, "enrol workload", e.enrollLocked(w, ports))
	default:
		e.noteAttemptLocked(w, "update capture", e.updateLocked(w, ports))
	}
	e.setMetricsLocked()
	e.progress.Add(1)
}

// updateLocked brings the capture of an enrolled pod in line: it attaches
// it again after the datapath reported an error (DatapathError), and
// updates its ports.
func (e *Enforcer) updateLocked(w *workload, ports bpf.PortSpec) error {
	key := w.w.Key()
	if w.reattach {
		// Enroll is idempotent: it attaches what is missing.
		if err := e.dp.Enroll(bpf.Pod{Key: key, NetnsPath: w.w.NetnsPath, Ports: w.ports}); err != nil {
			return fmt.Errorf("attach capture again: %w", err)
		}
		w.reattach = false
	}
	if samePorts(w.ports, ports) {
		return nil
	}
	before := e.established(w)
	if err := e.dp.UpdatePorts(key, ports); err != nil {
		return err
	}
	old := w.ports
	w.ports = ports
	e.log.Info("captured ports changed", "workload", key, "ports", portsString(ports))
	e.resetPreexisting(w, func(p uint16) bool { return ports.Covers(p) && !old.Covers(p) }, before)
	return nil
}

// DatapathError records an error the datapath reported for a pod after it
// was enrolled (bpf.Config.OnError: an interface that appeared and could
// not be captured, a lost interface watch): the workload counts as
// failing, and its capture is attached again with backoff until that
// succeeds. It does not wait for the Enforcer's lock, so the datapath may
// call it from its watchers.
func (e *Enforcer) DatapathError(key string, err error) {
	go func() {
		e.mu.Lock()
		defer e.mu.Unlock()
		w := e.workloads[key]
		if e.closed || w == nil || w.pod == nil {
			return // not enrolled: enrolment retries on its own
		}
		w.reattach = true
		e.noteAttemptLocked(w, "capture pod interfaces", err)
		e.setMetricsLocked()
	}()
}

// noteAttemptLocked records the outcome of an attempt to enrol w or to
// update its ports (what). A failure is logged at ERROR when w starts
// failing and at WARN on every further failed retry; it arms a retry with
// exponential backoff. A success ends the retries.
func (e *Enforcer) noteAttemptLocked(w *workload, what string, err error) {
	key := w.w.Key()
	if err == nil {
		if w.failures > 0 {
			e.log.Info("enrolment recovered", "workload", key, "failed_attempts", w.failures)
		}
		e.clearFailureLocked(w)
		return
	}
	w.err = err
	w.failures++
	delay := e.backoff(w.failures)
	if w.failures == 1 {
		e.log.Error(what, "workload", key, "error", err, "capture_closed", w.closed, "retry_in", delay.String())
	} else {
		e.log.Warn(what+" (retry)", "workload", key, "error", err, "attempt", w.failures, "capture_closed", w.closed, "retry_in", delay.String())
	}
	if w.retry != nil {
		w.retry.Stop()
	}
	w.retryGen++
	gen := w.retryGen
	w.retry = time.AfterFunc(delay, func() { e.retryEnrol(key, w, gen) })
}

// backoff is the delay before retry number n (1 for the first).
func (e *Enforcer) backoff(n int) time.Duration {
	d := e.cfg.RetryBackoff
	for i := 1; i < n && d < e.cfg.MaxRetryBackoff; i++ {
		d *= 2
	}
	return min(d, e.cfg.MaxRetryBackoff)
}

// retryEnrol is a retry timer's function: it tries w again, unless w is
// gone, has been tried since (gen), or the Enforcer is closed.
func (e *Enforcer) retryEnrol(key string, w *workload, gen uint64) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed || e.workloads[key] != w || w.retryGen != gen || w.failures == 0 {
		return
	}
	w.retry = nil
	e.syncLocked(w)
	if e.retried != nil {
		var err error
		if w.failures > 0 {
			err = w.err
		}
		e.retried(key, err)
	}
}

// clearFailureLocked ends w's retries and forgets its enrolment error.
func (e *Enforcer) clearFailureLocked(w *workload) {
	if w.retry != nil {
		w.retry.Stop()
		w.retry = nil
	}
	w.retryGen++
	w.failures = 0
	w.err = nil
}

// releaseLocked removes capture the datapath holds for w while no verifier
// serves it: kept closed for a failing enrolment, or re-adopted from a
// previous agent. Only for a workload that is gone or no longer selected.
func (e *Enforcer) releaseLocked(w *workload) {
	key := w.w.Key()
	attached := w.closed || e.dp.Capturing(key)
	// Also when nothing is attached: a failed Enroll may have left the
	// pod's map entries.
	if err := e.dp.Remove(key); err != nil {
		e.log.Error("detach capture", "workload", key, "error", err)
		return
	}
	w.closed, w.ports = false, bpf.PortSpec{}
	if attached {
		e.log.Info("detached capture of a workload without a verifier", "workload", key)
	}
}

// enrollLocked opens the listener first and attaches capture second: in the
// other order new connections would be dropped for a moment (never let
// through, since capture fails closed). When the listener or the verifier
// cannot be set up, capture is attached all the same (failClosedLocked):
// with no listener in the pod, it drops new connections to the captured
// ports. Capture that is attached, by this agent or re-adopted from a
// previous one, is never removed here: Enroll can be retried.
func (e *Enforcer) enrollLocked(w *workload, ports bpf.PortSpec) error {
	key := w.w.Key()
	pod := bpf.Pod{Key: key, NetnsPath: w.w.NetnsPath, Ports: ports}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	// The pod's connections are listed before capture can steer any of
	// them to the agent, so that none in the list is the agent's: just
	// before capture is attached, or, when it already is (re-adopted from
	// a previous agent, or kept closed after a failed attempt), before the
	// agent listens in the pod.
	var before *podnet.Snapshot
	adopted := e.dp.Capturing(key)
	if adopted {
		before = e.established(w)
	}
	ln, err := e.dp.Listen(ctx, w.w.NetnsPath, netip.Addr{})
	if err != nil {
		return e.failClosedLocked(w, pod, adopted, before, fmt.Errorf("listen in netns %s: %w", w.w.NetnsPath, err))
	}
	acc := newAcceptor(ln)
	v, err := e.newVerifierLocked(w)
	if err != nil {
		acc.Close()
		return e.failClosedLocked(w, pod, adopted, before, err)
	}
	e.serve(key, v, acc.view())
	if !adopted {
		before = e.established(w)
	}
	if err := e.dp.Enroll(pod); err != nil {
		// Whatever Enroll attached stays: with the listener closed, it
		// drops new connections.
		acc.Close()
		_ = v.srv.Close()
		v.dialer.Close()
		w.closed = e.dp.Enrolled(key)
		if w.closed {
			w.ports = ports
			e.resetPreexisting(w, ports.Covers, before)
		}
		return fmt.Errorf("attach capture: %w", err)
	}
	w.pod = &enrolled{acc: acc, since: time.Now(), netnsKey: w.w.NetnsPath, podVerifier: v}
	w.ports = ports
	w.closed = false
	e.log.Info("enrolled workload", "workload", key, "identity", w.w.SPIFFEID(e.cfg.TrustDomain), "ports", portsString(ports), "local_acceleration", v.accel)
	e.resetPreexisting(w, ports.Covers, before)
	return nil
}

// failClosedLocked attaches capture for pod without a listener, after cause
// kept the listener or the verifier from being set up, so that new
// connections to the captured ports are dropped, and resets the
// connections the application accepted on them before (as enrolment
// does), so that none goes on unchecked. It returns cause, joined with
// Enroll's error if capture could not be attached.
//
// Capture hands new connections only to the agent's own listener (flagged
// by bpf.Datapath.Listen): when the listener could not be opened because
// a socket of the pod holds the listener port, capture drops them whatever
// address that socket is bound to. When it is bound to the pod's address or
// the wildcard, the error names it (heldListenerPort): the pod listens on
// the agent's port, and must move for the pod to be served.
func (e *Enforcer) failClosedLocked(w *workload, pod bpf.Pod, adopted bool, before *podnet.Snapshot, cause error) error {
	if errors.Is(cause, unix.EADDRINUSE) {
		if a, ok := heldListenerPort(w.w.NetnsPath, w.w.IPs, e.dp.ListenerPort()); ok {
			cause = fmt.Errorf("%w; a socket of the pod listens on %s, the agent's listener port: new connections to captured ports are dropped until it is closed",
				cause, netip.AddrPortFrom(a, e.dp.ListenerPort()))
		}
	}
	if !adopted {
		before = e.established(w)
	}
	err := e.dp.Enroll(pod)
	// Closed means enrolled in the datapath, not "has links": a pod with
	// lo only is closed too, as capture attaches (and, without a listener,
	// drops) as soon as its interface appears.
	w.closed = e.dp.Enrolled(pod.Key)
	if w.closed {
		w.ports = pod.Ports
		e.resetPreexisting(w, pod.Ports.Covers, before)
	}
	if err != nil {
		return errors.Join(cause, fmt.Errorf("attach capture without a listener: %w", err))
	}
	return cause
}

// heldListenerPort reports an address of ips on which another socket in
// the netns listens on port, which capture's listener lookup finds (and
// refuses, as it is not the agent's): binding it, as any socket may while
// no other listens there, fails with EADDRINUSE. Errors other than that
// count as not held.
func heldListenerPort(netnsPath string, ips []netip.Addr, port uint16) (netip.Addr, bool) {
	var held netip.Addr
	_ = podnet.Do(netnsPath, func() error {
		for _, ip := range ips {
			ip = ip.Unmap()
			family, sa := unix.AF_INET6, unix.Sockaddr(&unix.SockaddrInet6{Port: int(port), Addr: ip.As16()})
			if ip.Is4() {
				family, sa = unix.AF_INET, &unix.SockaddrInet4{Port: int(port), Addr: ip.As4()}
			}
			fd, err := unix.Socket(family, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
			if err != nil {
				continue
			}
			// As the agent's listener: connections that used the port
			// before (TIME_WAIT, a previous agent's) do not conflict.
			_ = unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1)
			err = unix.Bind(fd, sa)
			unix.Close(fd)
			if errors.Is(err, unix.EADDRINUSE) {
				held = ip
				return nil
			}
		}
		return nil
	})
	return held, held.IsValid()
}

// established lists w's connections before capture can steer any of them
// to the agent, for resetPreexisting: it alone tells an application's
// connection still waiting in an accept queue from one captured for the
// agent. Nil (nothing queued is reset) when KeepPreexisting or on error.
func (e *Enforcer) established(w *workload) *podnet.Snapshot {
	if e.cfg.KeepPreexisting {
		return nil
	}
	s, err := podnet.Established(w.w.NetnsPath)
	if err != nil {
		e.log.Warn("list connections before capture; those in accept queues will not be reset", "workload", w.w.Key(), "error", err)
		return nil
	}
	return s
}

// resetPreexisting resets the connections w's application accepted, or
// has queued to accept, on the ports captured says capture now covers,
// before it did: capture only steers new connections. It runs after
// capture is attached, so every connection that could be missed is one the
// verifier accepts. before is from established. Failures are logged, not
// returned: capture itself is in place.
func (e *Enforcer) resetPreexisting(w *workload, captured func(uint16) bool, before *podnet.Snapshot) {
	if e.cfg.KeepPreexisting {
		return
	}
	var own map[uint32]bool
	var ownErr error
	reset, err := podnet.ResetInbound(w.w.NetnsPath, podnet.ResetFilter{
		Captured: captured,
		Before:   before,
		// Read once the connections are listed, so that one the verifier
		// accepted meanwhile is known as its own.
		Own: func(ino uint32) bool {
			if own == nil && ownErr == nil {
				own, ownErr = podnet.OwnSockets()
			}
			return ownErr != nil || own[ino] // unsure: reset nothing
		},
	})
	if ownErr != nil {
		err = errors.Join(err, ownErr)
	}
	if len(reset) > 0 {
		peers := make([]string, 0, min(len(reset), 8))
		for _, c := range reset[:min(len(reset), 8)] {
			peers = append(peers, c.Remote.String())
		}
		e.log.Info("reset connections opened before capture", "workload", w.w.Key(), "connections", len(reset), "peers", peers)
		e.cfg.Metrics.PreexistingReset(len(reset))
	}
	if err != nil {
		e.log.Warn("reset connections opened before capture", "workload", w.w.Key(), "error", err)
	}
}

// newVerifierLocked returns a verifier for w, not serving yet.
func (e *Enforcer) newVerifierLocked(w *workload) (*podVerifier, error) {
	key := w.w.Key()
	dialer, err := podnet.NewDialer(w.w.NetnsPath)
	if err != nil {
		return nil, fmt.Errorf("dialer in netns %s: %w", w.w.NetnsPath, err)
	}
	vc := e.cfg.Verifier
	vc.Workload = key
	vc.Authorizer = e.cfg.Engine.For(&w.policyW)
	vc.L4Authorizer = e.cfg.Engine.ForL4(&w.policyW)
	vc.Sources = verifier.SourceResolverFunc(e.Resolve)
	accel := e.accelerated(w)
	if accel {
		// Locally accelerated: the datapath knows the agent's upstream
		// sockets by their mark, and their bytes must not be spliced.
		dialer.Dialer.Control = podnet.MarkControl(e.dp.AccelMark())
		vc.NoSplice = true
	}
	vc.Dialer = dialer
	if e.cfg.Audit != nil {
		vc.Audit = e.cfg.Audit
	}
	vc.Metrics = e.cfg.Metrics
	vc.Logger = e.log.With("workload", key)
	srv, err := verifier.New(vc)
	if err != nil {
		dialer.Close()
		return nil, fmt.Errorf("verifier for %s: %w", key, err)
	}
	return &podVerifier{srv: srv, dialer: dialer, accel: accel}, nil
}

// serve starts v on l.
func (e *Enforcer) serve(key string, v *podVerifier, l *view) {
	served := make(chan struct{})
	v.view, v.served = l, served
	go func() {
		defer close(served)
		// net.ErrClosed: the view was closed for a replacement.
		if err := v.srv.Serve(l); err != nil && !errors.Is(err, verifier.ErrServerClosed) && !errors.Is(err, net.ErrClosed) {
			e.log.Error("verifier stopped", "workload", key, "error", err)
		}
	}()
}

// replaceVerifierLocked puts a new verifier in charge of an enrolled pod
// without a gap: capture stays attached and the listener open, the new
// verifier takes the next connection, and the old one finishes the
// connections it has (ShutdownGrace), as on unenrolment. On error the old
// verifier stays in charge; the next update of the workload tries again.
func (e *Enforcer) replaceVerifierLocked(w *workload) {
	key := w.w.Key()
	next, err := e.newVerifierLocked(w)
	if err != nil {
		w.err = err
		e.log.Error("replace verifier", "workload", key, "error", err)
		return
	}
	old := w.pod.podVerifier
	e.serve(key, next, w.pod.acc.view())
	w.pod.podVerifier = next
	old.view.Close()
	headerTimeout := e.cfg.Verifier.ReadHeaderTimeout
	if headerTimeout <= 0 {
		headerTimeout = 10 * time.Second // verifier.Config's default
	}
	e.retiring.Add(1)
	go func() {
		defer e.retiring.Done()
		retireReplaced(old, headerTimeout, e.cfg.ShutdownGrace, e.closing)
	}()
	e.log.Info("replaced verifier", "workload", key, "local_acceleration", next.accel)
}

// retireReplaced shuts down a verifier whose view is closed once nothing it
// accepted can be lost by it: after its Serve has returned (every
// connection its view handed out is tracked by then), and headerTimeout
// (its Config.ReadHeaderTimeout) later, when each of those connections has
// sent its first request or been closed by the verifier, since Shutdown
// closes a connection that has sent nothing yet. Its connections then get
// grace to finish, as on unenrolment. When closing is closed (the
// Enforcer closes) it retires v at once.
func retireReplaced(v *podVerifier, headerTimeout, grace time.Duration, closing <-chan struct{}) {
	t := time.NewTimer(headerTimeout)
	defer t.Stop()
	select {
	case <-v.served: // at once, unless Serve is backing off after EMFILE
		t.Reset(headerTimeout)
		select {
		case <-t.C:
		case <-closing:
		}
	case <-t.C:
		t.Reset(headerTimeout)
		select {
		case <-t.C:
		case <-closing:
		}
	case <-closing:
	}
	ctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	retire(ctx, v)
}

// retire lets v finish its connections until ctx is done, then closes the
// rest and its dialer.
func retire(ctx context.Context, v *podVerifier) {
	if err := v.srv.Shutdown(ctx); err != nil {
		_ = v.srv.Close()
	}
	if v.dialer != nil {
		v.dialer.Close()
	}
}

// unenrollLocked detaches capture first, so new connections reach the app
// directly, then lets the verifier's in-flight requests finish.
func (e *Enforcer) unenrollLocked(w *workload) {
	if w.pod == nil {
		return
	}
	key := w.w.Key()
	if err := e.dp.Remove(key); err != nil {
		e.log.Error("detach capture", "workload", key, "error", err)
	}
	p := w.pod
	w.pod, w.ports, w.closed, w.reattach = nil, bpf.PortSpec{}, false, false
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), e.cfg.ShutdownGrace)
		defer cancel()
		p.acc.Close()
		retire(ctx, p.podVerifier)
	}()
	e.log.Info("unenrolled workload", "workload", key)
}

func (e *Enforcer) setMetricsLocked() {
	if e.cfg.Metrics == nil {
		return
	}
	enrolled, failing := 0, 0
	for _, w := range e.workloads {
		if w.pod != nil {
			enrolled++
		}
		if w.failures > 0 {
			failing++
		}
	}
	e.cfg.Metrics.SetEnrolledPods(enrolled)
	e.cfg.Metrics.SetEnrolFailedPods(failing)
}

// Progress counts the workloads the Enforcer has reconciled so far. It is
// read without the Enforcer's lock, and advances while the Enforcer works
// through many workloads holding it (the initial sync enrols every pod of
// the node in turn, each enrolment bounded by a 5 s listen timeout), so a
// watchdog can tell a long sync from a stall.
func (e *Enforcer) Progress() uint64 {
	return e.progress.Load()
}

// Synced reports whether the workload source has reported every workload.
func (e *Enforcer) Synced() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.synced
}

// WorkloadStatus is one workload as the debug API shows it.
type WorkloadStatus struct {
	Workload identity.Workload
	Identity string
	ID       identity.ID
	CgroupID uint64
	Excluded identity.Exclusion
	Enrolled bool
	Since    time.Time
	Ports    bpf.PortSpec
	// Accelerated: the verifier's upstream connections are locally
	// accelerated (only while Enrolled).
	Accelerated bool
	// Closed: enrolment is failing but capture is attached, so new
	// connections to Ports are dropped until a retry succeeds. A failing
	// workload that is not Closed takes connections unchecked.
	Closed bool
	// Failures counts consecutive failed enrolment attempts (retried with
	// backoff); LastError is the last one's error.
	Failures  int
	LastError string
	// Widened: the policies selecting the workload list more ports than
	// the datapath holds for a pod (bpf.MaxPorts), so every port but the
	// listener's is captured (Ports says so): HTTP to ports no policy
	// lists is let through as not captured, other protocols on them are
	// refused unless passthrough.
	Widened bool
}

// Workloads lists the node's workloads, sorted by key.
func (e *Enforcer) Workloads() []WorkloadStatus {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]WorkloadStatus, 0, len(e.workloads))
	for _, w := range e.workloads {
		s := WorkloadStatus{Workload: w.w, Identity: w.w.SPIFFEID(e.cfg.TrustDomain), ID: w.id, CgroupID: w.cgroupID, Excluded: w.excl, Ports: w.ports}
		if w.pod != nil {
			s.Enrolled, s.Since, s.Accelerated = true, w.pod.since, w.pod.accel
		}
		s.Closed = w.pod == nil && w.closed
		s.Failures = w.failures
		s.Widened = w.widened && (w.pod != nil || w.closed)
		if err := errors.Join(w.err, w.regErr); err != nil {
			s.LastError = err.Error()
		}
		out = append(out, s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Workload.Key() < out[j].Workload.Key() })
	return out
}

// Workload returns the policy view of one workload by key.
func (e *Enforcer) Workload(key string) (*authz.Workload, bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	w := e.workloads[key]
	if w == nil {
		return nil, false
	}
	return w.policyW.Load(), true
}

// Close stops every verifier (bounded by ctx) and releases listeners. The
// datapath itself is left to the caller (Close keeps pins, Teardown not).
func (e *Enforcer) Close(ctx context.Context) error {
	e.mu.Lock()
	if !e.closed {
		close(e.closing)
	}
	e.closed = true
	var pods []*enrolled
	for _, w := range e.workloads {
		if w.retry != nil {
			w.retry.Stop()
			w.retry = nil
		}
		if w.pod != nil {
			pods = append(pods, w.pod)
		}
	}
	e.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range pods {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.acc.Close()
			retire(ctx, p.podVerifier)
		}()
	}
	wg.Wait()
	// Replaced verifiers retire at once now; wait for them within ctx.
	retired := make(chan struct{})
	go func() {
		e.retiring.Wait()
		close(retired)
	}()
	select {
	case <-retired:
	case <-ctx.Done():
	}
	return nil
}

func samePorts(a, b bpf.PortSpec) bool {
	return a.Mode == b.Mode && slices.Equal(a.Ports, b.Ports)
}

func portsString(p bpf.PortSpec) string {
	s := fmt.Sprint(p.Ports)
	if p.Mode == bpf.CaptureAllExcept {
		return "all except " + s
	}
	return s
}
