package kube

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"github.com/portcullis-mesh/portcullis/identity"
	"github.com/portcullis-mesh/portcullis/identity/ipcache"
	"github.com/portcullis-mesh/portcullis/identity/kube/coreclient"
	"github.com/portcullis-mesh/portcullis/identity/procfs"
	"github.com/portcullis-mesh/portcullis/test/kubeenv"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

// fakeLocator stands in for /proc: tests say which pods "run".
type fakeLocator struct {
	mu   sync.Mutex
	pods map[string]*procfs.Pod
}

func (f *fakeLocator) Find(uid string) (*procfs.Pod, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	p, ok := f.pods[uid]
	if !ok {
		return nil, fmt.Errorf("find %s: %w", uid, procfs.ErrNotFound)
	}
	return p, nil
}

func (f *fakeLocator) Alive(pid int, start uint64) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, p := range f.pods {
		if p.SandboxPID == pid && p.SandboxStartTime == start {
			return true
		}
	}
	return false
}

// run sets pod uid running with sandbox pid; pid 0 stops it.
func (f *fakeLocator) run(uid string, pid int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if pid == 0 {
		delete(f.pods, uid)
		return
	}
	f.pods[uid] = &procfs.Pod{
		UID: uid, SandboxPID: pid, SandboxStartTime: uint64(pid) * 10,
		NetnsPath:  fmt.Sprintf("/proc/%d/ns/net", pid),
		CgroupPath: "/sys/fs/cgroup/kubepods.slice/pod" + uid,
	}
}

type harness struct {
	t      *testing.T
	ctx    context.Context
	client kubernetes.Interface // creates and changes the objects
	core   rest.Interface       // the Source's client
	loc    *fakeLocator
	ipc    *ipcache.Cache
	events chan identity.Event
}

const node = "node-a"

func newHarness(t *testing.T) *harness {
	env := kubeenv.Start(t, kubeenv.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	core, err := coreclient.NewForConfig(env.Config())
	if err != nil {
		t.Fatal(err)
	}
	return &harness{
		t: t, ctx: ctx,
		client: kubernetes.NewForConfigOrDie(env.Config()),
		core:   core,
		loc:    &fakeLocator{pods: map[string]*procfs.Pod{}},
		ipc:    &ipcache.Cache{},
		events: make(chan identity.Event, 256),
	}
}

// start runs a Source until the test ends; its informers stop before the
// API server does (cleanups run last-registered first).
func (h *harness) start() *Source {
	src, err := New(h.core, Config{
		NodeName: node,
		AgentPod: "portcullis/agent",
		IPCache:  h.ipc,
		Locator:  h.loc,
		RetryMax: 200 * time.Millisecond,
		// Short, so the recheck subtest is quick; it must produce no
		// events while nothing changes, which the other subtests check.
		RecheckPeriod: 100 * time.Millisecond,
	})
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(h.ctx)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, func(ev identity.Event) { h.events <- ev }) }()
	h.t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				h.t.Errorf("Run: %v", err)
			}
		case <-time.After(30 * time.Second):
			h.t.Errorf("Run did not return 30s after cancel")
		}
	})
	return src
}

func (h *harness) next() identity.Event {
	h.t.Helper()
	select {
	case ev := <-h.events:
		return ev
	case <-time.After(15 * time.Second):
		h.t.Fatalf("no event within 15s")
		return identity.Event{}
	}
}

// none asserts no event arrives within d (used only after a change that
// must not produce one, where there is no signal to wait for).
func (h *harness) none(d time.Duration) {
	h.t.Helper()
	select {
	case ev := <-h.events:
		h.t.Fatalf("unexpected event %s for %s", ev.Type, ev.Workload.Key())
	case <-time.After(d):
	}
}

// eventually polls cond every 20ms for up to 15s: the IP cache offers no
// change notification.
func (h *harness) eventually(what string, cond func() bool) {
	h.t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			h.t.Fatalf("%s: not within 15s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (h *harness) namespace(name string, labels map[string]string) {
	h.t.Helper()
	_, err := h.client.CoreV1().Namespaces().Create(h.ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{})
	if err != nil {
		h.t.Fatalf("create namespace %s: %v", name, err)
	}
}

func (h *harness) serviceAccount(ns, name, clientID string) {
	h.t.Helper()
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	if clientID != "" {
		sa.Annotations = map[string]string{identity.ClientIDAnnotation: clientID, "other": "dropped"}
	}
	if _, err := h.client.CoreV1().ServiceAccounts(ns).Create(h.ctx, sa, metav1.CreateOptions{}); err != nil {
		h.t.Fatalf("create service account: %v", err)
	}
}

type podSpec struct {
	ns, name, node, sa string
	hostNetwork        bool
	labels             map[string]string
	ip                 string
}

// pod creates a pod bound to a node and sets its status as a kubelet would.
func (h *harness) pod(p podSpec) *corev1.Pod {
	h.t.Helper()
	created, err := kubeenv.RunningPod(h.ctx, h.client, kubeenv.Pod{
		Namespace: p.ns, Name: p.name, Node: p.node, ServiceAccount: p.sa,
		Labels: p.labels, IPs: []string{p.ip}, HostNetwork: p.hostNetwork,
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return created
}

// deletePod deletes with grace period 0: there is no kubelet to confirm.
func (h *harness) deletePod(ns, name string) {
	h.t.Helper()
	if err := kubeenv.DeletePodNow(h.ctx, h.client, ns, name); err != nil {
		h.t.Fatal(err)
	}
}

// settle returns the first event for key that has the pod's IPs: a pod is
// created and then given its status (as a kubelet would), so the source may
// legitimately report it in two steps. Events for other pods fail the test.
func (h *harness) settle(key string) identity.Event {
	h.t.Helper()
	for {
		ev := h.next()
		if ev.Workload.Key() != key {
			h.t.Fatalf("got %s for %s while waiting for %s", ev.Type, ev.Workload.Key(), key)
		}
		if len(ev.Workload.IPs) > 0 || ev.Type == identity.EventRemoved {
			return ev
		}
	}
}

func (h *harness) expect(want identity.Event) {
	h.t.Helper()
	got := h.next()
	if diff := cmp.Diff(want, got, cmpopts.EquateComparable(netip.Addr{})); diff != "" {
		h.t.Fatalf("event mismatch (-want +got):\n%s", diff)
	}
}

func TestSource(t *testing.T) {
	h := newHarness(t)
	enforced := map[string]string{identity.EnforceLabel: identity.EnforceEnabled, "team": "a"}
	h.namespace("team-a", enforced)
	h.namespace("portcullis", nil)
	h.serviceAccount("team-a", "api", "11111111-aaaa-4bbb-8ccc-000000000001")

	// A pod that runs before the agent starts is reported before Synced.
	early := h.pod(podSpec{ns: "team-a", name: "early", node: node, sa: "api", labels: map[string]string{"app": "early"}, ip: "10.1.0.1"})
	h.loc.run(string(early.UID), 101)
	// Pods on other nodes feed only the IP cache.
	h.pod(podSpec{ns: "team-a", name: "remote", node: "node-b", sa: "api", ip: "10.2.0.1"})
	src := h.start()

	earlyWL := identity.Workload{
		Namespace: "team-a", Name: "early", UID: string(early.UID), ServiceAccount: "api",
		ClientID: "11111111-aaaa-4bbb-8ccc-000000000001",
		Labels:   map[string]string{"app": "early"},
		NamespaceLabels: map[string]string{
			identity.EnforceLabel: identity.EnforceEnabled, "team": "a",
			"kubernetes.io/metadata.name": "team-a", // set by the API server
		},
		IPs:       []netip.Addr{netip.MustParseAddr("10.1.0.1")},
		NetnsPath: "/proc/101/ns/net", CgroupPath: "/sys/fs/cgroup/kubepods.slice/pod" + string(early.UID),
	}
	h.expect(identity.Event{Type: identity.EventAdded, Workload: earlyWL, NamespaceEnforced: true})
	h.expect(identity.Event{Type: identity.EventSynced})
	// The API server applies the spec.nodeName selector: other nodes'
	// pods are not even cached as local.
	if got, want := src.localPods.GetIndexer().ListKeys(), []string{"team-a/early"}; !cmp.Equal(got, want) {
		t.Errorf("local pod cache: got %q, want %q", got, want)
	}

	remoteSrc := identity.Source{
		ID: "spiffe://cluster.local/ns/team-a/sa/api", Namespace: "team-a", ServiceAccount: "api",
		ClientID: "11111111-aaaa-4bbb-8ccc-000000000001",
	}
	h.eventually("remote pod in the ip cache", func() bool {
		got, ok := h.ipc.Lookup(netip.MustParseAddr("10.2.0.1"))
		return ok && got == remoteSrc
	})

	t.Run("starting pod is reported once located", func(t *testing.T) {
		late := h.pod(podSpec{ns: "team-a", name: "late", node: node, ip: "10.1.0.2"})
		h.none(300 * time.Millisecond) // not running yet: nothing to enrol
		h.loc.run(string(late.UID), 102)
		ev := h.settle("team-a/late")
		if ev.Type == identity.EventRemoved || ev.Workload.NetnsPath != "/proc/102/ns/net" || ev.Workload.SA() != "default" {
			t.Fatalf("got %s %+v, want late in /proc/102/ns/net with SA default", ev.Type, ev.Workload)
		}
		// The sandbox is replaced: a new netns, reported as an update.
		h.loc.run(string(late.UID), 0)
		h.loc.run(string(late.UID), 202)
		late.Labels = map[string]string{"restarted": "yes"}
		if _, err := h.client.CoreV1().Pods("team-a").Update(h.ctx, late, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		ev = h.next()
		if ev.Type != identity.EventUpdated || ev.Workload.NetnsPath != "/proc/202/ns/net" || ev.Workload.Labels["restarted"] != "yes" {
			t.Fatalf("got %s %+v, want updated with /proc/202/ns/net and the new label", ev.Type, ev.Workload)
		}
		h.deletePod("team-a", "late")
		ev = h.next()
		if ev.Type != identity.EventRemoved || ev.Workload.Name != "late" {
			t.Fatalf("got %s %s, want removed late", ev.Type, ev.Workload.Key())
		}
	})

	t.Run("sandbox dies without a pod update", func(t *testing.T) {
		p := h.pod(podSpec{ns: "team-a", name: "quiet", node: node, ip: "10.1.0.3"})
		h.loc.run(string(p.UID), 103)
		if ev := h.settle("team-a/quiet"); ev.Type == identity.EventRemoved {
			t.Fatalf("got removed, want quiet reported")
		}
		h.none(300 * time.Millisecond) // rechecks of a live pod say nothing
		h.loc.run(string(p.UID), 0)
		if ev := h.next(); ev.Type != identity.EventRemoved || ev.Workload.Name != "quiet" {
			t.Fatalf("got %s %s, want removed quiet (found by the periodic recheck)", ev.Type, ev.Workload.Key())
		}
		h.loc.run(string(p.UID), 203)
		if ev := h.next(); ev.Type != identity.EventAdded || ev.Workload.NetnsPath != "/proc/203/ns/net" {
			t.Fatalf("got %s %q, want added in /proc/203/ns/net", ev.Type, ev.Workload.NetnsPath)
		}
		h.deletePod("team-a", "quiet")
		if ev := h.next(); ev.Type != identity.EventRemoved {
			t.Fatalf("got %s, want removed", ev.Type)
		}
	})

	t.Run("local acceleration annotation", func(t *testing.T) {
		p := h.pod(podSpec{ns: "team-a", name: "accel", node: node, ip: "10.1.0.4"})
		h.loc.run(string(p.UID), 104)
		if ev := h.settle("team-a/accel"); ev.Type == identity.EventRemoved || ev.Workload.LocalAcceleration != identity.AccelerationDefault {
			t.Fatalf("got %s with %s, want accel reported with default", ev.Type, ev.Workload.LocalAcceleration)
		}
		// Each value in turn; an invalid one is no choice.
		for _, step := range []struct {
			value string
			want  identity.Acceleration
		}{
			{"true", identity.AccelerationOn},
			{"false", identity.AccelerationOff},
			{"fast please", identity.AccelerationDefault},
			{"true", identity.AccelerationOn},
		} {
			cur, err := h.client.CoreV1().Pods("team-a").Get(h.ctx, "accel", metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			cur.Annotations = map[string]string{identity.LocalAccelerationAnnotation: step.value}
			if _, err := h.client.CoreV1().Pods("team-a").Update(h.ctx, cur, metav1.UpdateOptions{}); err != nil {
				t.Fatal(err)
			}
			if ev := h.next(); ev.Type != identity.EventUpdated || ev.Workload.Name != "accel" || ev.Workload.LocalAcceleration != step.want {
				t.Fatalf("annotation %q: got %s %s with %s, want accel updated with %s", step.value, ev.Type, ev.Workload.Key(), ev.Workload.LocalAcceleration, step.want)
			}
		}
		h.deletePod("team-a", "accel")
		if ev := h.next(); ev.Type != identity.EventRemoved || ev.Workload.Name != "accel" {
			t.Fatalf("got %s %s, want removed accel", ev.Type, ev.Workload.Key())
		}
	})

	t.Run("excluded pods", func(t *testing.T) {
		h.pod(podSpec{ns: "team-a", name: "hostnet", node: node, hostNetwork: true, ip: "192.168.0.10"})
		ev := h.settle("team-a/hostnet")
		if ev.Type == identity.EventRemoved || ev.Exclusion != identity.ExcludedHostNetwork || ev.Workload.NetnsPath != "" {
			t.Fatalf("got %s exclusion %s netns %q, want added or updated, host_network, no netns", ev.Type, ev.Exclusion, ev.Workload.NetnsPath)
		}
		h.pod(podSpec{ns: "portcullis", name: "agent", node: node, ip: "10.1.0.99"})
		ev = h.settle("portcullis/agent")
		if ev.Type == identity.EventRemoved || ev.Exclusion != identity.ExcludedSelf {
			t.Fatalf("got %s exclusion %s, want added or updated, self", ev.Type, ev.Exclusion)
		}
		h.eventually("agent pod in the ip cache", func() bool {
			_, ok := h.ipc.Lookup(netip.MustParseAddr("10.1.0.99"))
			return ok
		})
		if _, ok := h.ipc.Lookup(netip.MustParseAddr("192.168.0.10")); ok {
			t.Errorf("host-network pod's address is in the ip cache")
		}
	})

	t.Run("service account and namespace changes", func(t *testing.T) {
		sa, err := h.client.CoreV1().ServiceAccounts("team-a").Get(h.ctx, "api", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		sa.Annotations[identity.ClientIDAnnotation] = "22222222-aaaa-4bbb-8ccc-000000000002"
		if _, err := h.client.CoreV1().ServiceAccounts("team-a").Update(h.ctx, sa, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		ev := h.next()
		if ev.Type != identity.EventUpdated || ev.Workload.Name != "early" || ev.Workload.ClientID != "22222222-aaaa-4bbb-8ccc-000000000002" {
			t.Fatalf("got %s %s client %q, want early updated with the new client ID", ev.Type, ev.Workload.Key(), ev.Workload.ClientID)
		}
		h.eventually("remote ip cache entry has the new client ID", func() bool {
			got, _ := h.ipc.Lookup(netip.MustParseAddr("10.2.0.1"))
			return got.ClientID == "22222222-aaaa-4bbb-8ccc-000000000002"
		})

		ns, err := h.client.CoreV1().Namespaces().Get(h.ctx, "team-a", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		delete(ns.Labels, identity.EnforceLabel)
		if _, err := h.client.CoreV1().Namespaces().Update(h.ctx, ns, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		// hostnet and early are both in team-a; order follows the index.
		seen := map[string]bool{}
		for range 2 {
			ev := h.next()
			if ev.Type != identity.EventUpdated || ev.NamespaceEnforced {
				t.Fatalf("got %s %s enforced %v, want updated, not enforced", ev.Type, ev.Workload.Key(), ev.NamespaceEnforced)
			}
			seen[ev.Workload.Name] = true
		}
		if !seen["early"] || !seen["hostnet"] {
			t.Errorf("namespace label change updated %v, want early and hostnet", seen)
		}
	})

	t.Run("deleted and finished pods are removed", func(t *testing.T) {
		h.deletePod("team-a", "remote")
		h.eventually("remote pod gone from the ip cache", func() bool {
			_, ok := h.ipc.Lookup(netip.MustParseAddr("10.2.0.1"))
			return !ok
		})
		p, err := h.client.CoreV1().Pods("team-a").Get(h.ctx, "early", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Status.Phase = corev1.PodSucceeded
		if _, err := h.client.CoreV1().Pods("team-a").UpdateStatus(h.ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
		ev := h.next()
		if ev.Type != identity.EventRemoved || ev.Workload.Name != "early" {
			t.Fatalf("got %s %s, want removed early", ev.Type, ev.Workload.Key())
		}
		h.eventually("finished pod gone from the ip cache", func() bool {
			_, ok := h.ipc.Lookup(netip.MustParseAddr("10.1.0.1"))
			return !ok
		})
	})
}

func TestNewRequiresNodeName(t *testing.T) {
	if _, err := New(nil, Config{Locator: &fakeLocator{}}); err == nil {
		t.Errorf("New without NodeName: got nil error")
	}
}

// scanningLocator is a fakeLocator that can also scan every pod at once, and
// counts how it is used.
type scanningLocator struct {
	*fakeLocator
	mu           sync.Mutex
	scans, finds int
}

func (s *scanningLocator) Scan() (map[string]*procfs.Pod, error) {
	s.mu.Lock()
	s.scans++
	s.mu.Unlock()
	s.fakeLocator.mu.Lock()
	defer s.fakeLocator.mu.Unlock()
	out := make(map[string]*procfs.Pod, len(s.pods))
	for k, v := range s.pods {
		out[k] = v
	}
	return out, nil
}

func (s *scanningLocator) Find(uid string) (*procfs.Pod, error) {
	s.mu.Lock()
	s.finds++
	s.mu.Unlock()
	return s.fakeLocator.Find(uid)
}

// TestInitialSyncScansOnce checks that locating the node's pods at start
// reads /proc once, not once per pod.
func TestInitialSyncScansOnce(t *testing.T) {
	h := newHarness(t)
	h.namespace("many", nil)
	for i := range 20 {
		p := h.pod(podSpec{ns: "many", name: fmt.Sprintf("p%02d", i), node: node, ip: fmt.Sprintf("10.3.0.%d", i+1)})
		h.loc.run(string(p.UID), 1000+i)
	}
	loc := &scanningLocator{fakeLocator: h.loc}
	src, err := New(h.core, Config{NodeName: node, Locator: loc})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(h.ctx)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, func(ev identity.Event) { h.events <- ev }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	added := 0
	for ev := h.next(); ev.Type != identity.EventSynced; ev = h.next() {
		if ev.Type == identity.EventAdded && ev.Workload.NetnsPath != "" {
			added++
		}
	}
	loc.mu.Lock()
	defer loc.mu.Unlock()
	if added != 20 || loc.finds != 0 || loc.scans > 2 {
		t.Errorf("initial sync: %d pods added with %d scans and %d finds; want 20 with 1 (at most 2) scans and no finds", added, loc.scans, loc.finds)
	}
}
