// Package kube is the Kubernetes workload source: client-go informers for
// the pods on this node (with their identity.LocalAccelerationAnnotation;
// an invalid value is logged and ignored), every pod's addresses (for the
// IP cache),
// service accounts (the Entra Workload ID client ID) and namespaces
// (labels, enrolment). It reports the node's workloads as identity.Events,
// located through /proc (identity/procfs), and keeps an ipcache.Cache of
// the whole cluster.
//
// Informer transforms strip every object to the fields read here. Events
// for one pod are computed by a single worker from the informers' current
// state, so bursts of updates collapse, and a pod whose processes cannot be
// found yet (it is starting) is retried with backoff.
package kube

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"reflect"
	"sync"
	"time"

	"github.com/portcullis-mesh/portcullis/identity"
	"github.com/portcullis-mesh/portcullis/identity/ipcache"
	"github.com/portcullis-mesh/portcullis/identity/kube/coreclient"
	"github.com/portcullis-mesh/portcullis/identity/procfs"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Locator finds a pod's processes on the node. *procfs.Scanner implements
// it.
type Locator interface {
	// Find returns where the pod with uid lives, or an error wrapping
	// procfs.ErrNotFound when none of its processes runs.
	Find(uid string) (*procfs.Pod, error)
	// Alive reports whether the process pid that started at startTime
	// still runs.
	Alive(pid int, startTime uint64) bool
}

// Config configures a Source.
type Config struct {
	// NodeName is the node this agent serves (the downward API's
	// spec.nodeName). Required.
	NodeName string
	// TrustDomain is the SPIFFE trust domain of IP cache identities. Empty
	// means identity.DefaultTrustDomain.
	TrustDomain string
	// AgentPod is the agent's own pod as "namespace/name"; it is reported
	// with identity.ExcludedSelf. Empty means no pod is recognised as the
	// agent.
	AgentPod string
	// IPCache receives every pod's addresses in the cluster (host-network
	// pods excluded: their address is the node's). Nil means no IP cache is
	// maintained and the cluster-wide pod informer is not started.
	IPCache *ipcache.Cache
	// Locator finds local pods' network namespaces and cgroups. Nil means
	// a procfs.Scanner on /proc.
	Locator Locator
	// ResyncPeriod is the informers' resync period; each resync
	// re-evaluates every local pod. Zero means no periodic resync.
	ResyncPeriod time.Duration
	// RecheckPeriod is how often every reported local pod is checked
	// against /proc (one stat per pod) so that a sandbox that died without
	// a Pod update is noticed. Zero means 30 seconds; negative disables.
	RecheckPeriod time.Duration
	// RetryMax caps the backoff between attempts to locate a starting pod
	// (the first retry is after 100ms, doubling). Zero means 10 seconds.
	RetryMax time.Duration
	// Logger receives retries and informer trouble. Nil means discard.
	Logger *slog.Logger
}

// Source watches the API server. Create it with New and run it with Run.
type Source struct {
	cfg Config
	log *slog.Logger

	localPods    cache.SharedIndexInformer
	clusterPods  cache.SharedIndexInformer // nil without an IP cache
	serviceAccts cache.SharedIndexInformer
	namespaces   cache.SharedIndexInformer

	queue workqueue.TypedRateLimitingInterface[string]

	// Owned by the worker goroutine.
	reported map[string]*reported
	scan     map[string]*procfs.Pod // last Scan of a Scanner locator
	scanAt   time.Time

	mu      sync.Mutex
	running bool
}

// reported is what the source last told the handler about a pod.
type reported struct {
	ev  identity.Event
	loc *procfs.Pod // nil when excluded (not located)
}

// syncMarker is queued once the informers have delivered their initial
// lists; the worker turns it into identity.EventSynced.
const syncMarker = "\x00synced"

// saIndex indexes cluster pods by "namespace/serviceaccount".
const saIndex = "serviceaccount"

// New returns a Source for cfg using client, a core/v1 REST client from
// coreclient.NewForConfig.
func New(client rest.Interface, cfg Config) (*Source, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("new kube source: node name is required")
	}
	if cfg.RetryMax == 0 {
		cfg.RetryMax = 10 * time.Second
	}
	if cfg.RecheckPeriod == 0 {
		cfg.RecheckPeriod = 30 * time.Second
	}
	if cfg.Locator == nil {
		sc, err := procfs.NewScanner(procfs.Config{})
		if err != nil {
			return nil, fmt.Errorf("new kube source: %w", err)
		}
		cfg.Locator = sc
	}
	s := &Source{cfg: cfg, log: cfg.Logger, reported: map[string]*reported{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}

	s.localPods = newInformer(client, "pods", func() runtime.Object { return &corev1.PodList{} }, &corev1.Pod{}, cfg.ResyncPeriod,
		func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", cfg.NodeName).String()
		})
	s.serviceAccts = newInformer(client, "serviceaccounts", func() runtime.Object { return &corev1.ServiceAccountList{} }, &corev1.ServiceAccount{}, cfg.ResyncPeriod, nil)
	s.namespaces = newInformer(client, "namespaces", func() runtime.Object { return &corev1.NamespaceList{} }, &corev1.Namespace{}, cfg.ResyncPeriod, nil)
	transforms := map[cache.SharedIndexInformer]cache.TransformFunc{
		s.localPods:    stripLocalPod,
		s.serviceAccts: stripServiceAccount,
		s.namespaces:   stripNamespace,
	}
	if cfg.IPCache != nil {
		s.clusterPods = newInformer(client, "pods", func() runtime.Object { return &corev1.PodList{} }, &corev1.Pod{}, cfg.ResyncPeriod, nil)
		transforms[s.clusterPods] = stripClusterPod
		if err := s.clusterPods.AddIndexers(cache.Indexers{saIndex: indexByServiceAccount}); err != nil {
			return nil, fmt.Errorf("new kube source: index pods: %w", err)
		}
	}
	for inf, tf := range transforms {
		if err := inf.SetTransform(tf); err != nil {
			return nil, fmt.Errorf("new kube source: set transform: %w", err)
		}
	}
	s.queue = workqueue.NewTypedRateLimitingQueueWithConfig(
		workqueue.NewTypedItemExponentialFailureRateLimiter[string](100*time.Millisecond, cfg.RetryMax),
		workqueue.TypedRateLimitingQueueConfig[string]{})
	return s, nil
}

// newInformer returns an informer of resource in every namespace, indexed by
// namespace, as client-go's shared informer factory makes them. tweak, when
// not nil, edits the list and watch options.
func newInformer(client rest.Interface, resource string, newList func() runtime.Object, obj runtime.Object, resync time.Duration, tweak func(*metav1.ListOptions)) cache.SharedIndexInformer {
	return cache.NewSharedIndexInformerWithOptions(
		coreclient.ListWatch(client, resource, newList, tweak),
		obj,
		cache.SharedIndexInformerOptions{
			ResyncPeriod: resync,
			Indexers:     cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
		})
}

// informers returns the informers the source runs.
func (s *Source) informers() []cache.SharedIndexInformer {
	infs := []cache.SharedIndexInformer{s.localPods, s.serviceAccts, s.namespaces}
	if s.clusterPods != nil {
		infs = append(infs, s.clusterPods)
	}
	return infs
}

// Run starts the informers, reports events to h until ctx ends, then stops
// the informers and returns once they have. h is called from one goroutine,
// in order. Run reports identity.EventSynced once the initial state has
// been reported. It returns an error if the informers do not sync before
// ctx ends; a Source runs once.
func (s *Source) Run(ctx context.Context, h identity.Handler) error {
	s.mu.Lock()
	if s.running {
		s.mu.Unlock()
		return errors.New("run kube source: already run")
	}
	s.running = true
	s.mu.Unlock()

	regs, err := s.addHandlers()
	if err != nil {
		return err
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		s.queue.ShutDown()
		// Stop informers before returning: the caller may stop the API
		// server next.
		wg.Wait()
	}()
	for _, inf := range s.informers() {
		wg.Go(func() { inf.RunWithContext(ctx) })
	}

	synced := make([]cache.InformerSynced, 0, len(regs))
	for _, r := range regs {
		synced = append(synced, r.HasSynced)
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return fmt.Errorf("run kube source: wait for informer sync: %w", context.Cause(ctx))
	}
	// Pods are evaluated only once every informer has synced: a pod seen
	// before its namespace or service account would be reported with
	// missing labels or client ID. Changes queued meanwhile wait.
	s.queue.Add(syncMarker)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for s.processNext(h) {
		}
	}()
	defer func() {
		s.queue.ShutDown()
		<-done
	}()
	if s.cfg.RecheckPeriod > 0 {
		t := time.NewTicker(s.cfg.RecheckPeriod)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return nil
			case <-t.C:
				for _, key := range s.localPods.GetIndexer().ListKeys() {
					s.queue.Add(key)
				}
			}
		}
	}
	<-ctx.Done()
	return nil
}

func (s *Source) addHandlers() ([]cache.ResourceEventHandlerRegistration, error) {
	var regs []cache.ResourceEventHandlerRegistration
	add := func(inf cache.SharedIndexInformer, h cache.ResourceEventHandler) error {
		r, err := inf.AddEventHandler(h)
		if err != nil {
			return fmt.Errorf("run kube source: add event handler: %w", err)
		}
		regs = append(regs, r)
		return nil
	}
	enqueuePod := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			s.queue.Add(key)
		}
	}
	if err := add(s.localPods, cache.ResourceEventHandlerFuncs{
		AddFunc:    enqueuePod,
		UpdateFunc: func(_, obj any) { enqueuePod(obj) },
		DeleteFunc: enqueuePod,
	}); err != nil {
		return nil, err
	}
	// A namespace's labels or a service account's client ID feed every
	// local workload of the namespace.
	enqueueNamespace := func(ns string) {
		objs, _ := s.localPods.GetIndexer().ByIndex(cache.NamespaceIndex, ns)
		for _, o := range objs {
			enqueuePod(o)
		}
	}
	if err := add(s.namespaces, cache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if ns, ok := obj.(*corev1.Namespace); ok {
				enqueueNamespace(ns.Name)
			}
		},
		UpdateFunc: func(old, obj any) {
			o, _ := old.(*corev1.Namespace)
			n, ok := obj.(*corev1.Namespace)
			if ok && (o == nil || !maps.Equal(o.Labels, n.Labels)) {
				enqueueNamespace(n.Name)
			}
		},
	}); err != nil {
		return nil, err
	}
	onSA := func(obj any) {
		if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
			obj = t.Obj
		}
		sa, ok := obj.(*corev1.ServiceAccount)
		if !ok {
			return
		}
		enqueueNamespace(sa.Namespace)
		s.refreshIPCacheForSA(sa.Namespace, sa.Name)
	}
	if err := add(s.serviceAccts, cache.ResourceEventHandlerFuncs{
		AddFunc:    onSA,
		UpdateFunc: func(_, obj any) { onSA(obj) },
		DeleteFunc: onSA,
	}); err != nil {
		return nil, err
	}
	if s.clusterPods != nil {
		if err := add(s.clusterPods, cache.ResourceEventHandlerFuncs{
			AddFunc:    s.updateIPCache,
			UpdateFunc: func(_, obj any) { s.updateIPCache(obj) },
			DeleteFunc: func(obj any) {
				if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
					s.cfg.IPCache.Delete(key)
				}
			},
		}); err != nil {
			return nil, err
		}
	}
	return regs, nil
}

func indexByServiceAccount(obj any) ([]string, error) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return nil, nil
	}
	return []string{p.Namespace + "/" + serviceAccount(p)}, nil
}

func serviceAccount(p *corev1.Pod) string {
	if p.Spec.ServiceAccountName == "" {
		return "default"
	}
	return p.Spec.ServiceAccountName
}

// updateIPCache sets the cache entry of one pod from the cluster informer.
func (s *Source) updateIPCache(obj any) {
	p, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	key := p.Namespace + "/" + p.Name
	ips := podIPs(p)
	if p.Spec.HostNetwork || terminal(p) || len(ips) == 0 {
		s.cfg.IPCache.Delete(key)
		return
	}
	sa := serviceAccount(p)
	s.cfg.IPCache.Upsert(key, ips, identity.Source{
		ID:             identity.SPIFFEID(s.cfg.TrustDomain, p.Namespace, sa),
		Namespace:      p.Namespace,
		ServiceAccount: sa,
		ClientID:       s.clientID(p.Namespace, sa),
	})
}

func (s *Source) refreshIPCacheForSA(ns, sa string) {
	if s.clusterPods == nil {
		return
	}
	objs, _ := s.clusterPods.GetIndexer().ByIndex(saIndex, ns+"/"+sa)
	for _, o := range objs {
		s.updateIPCache(o)
	}
}

func (s *Source) clientID(ns, sa string) string {
	obj, _, _ := s.serviceAccts.GetIndexer().GetByKey(ns + "/" + sa)
	acct, ok := obj.(*corev1.ServiceAccount)
	if !ok {
		return ""
	}
	return acct.Annotations[identity.ClientIDAnnotation]
}

func terminal(p *corev1.Pod) bool {
	return p.Status.Phase == corev1.PodSucceeded || p.Status.Phase == corev1.PodFailed
}

func podIPs(p *corev1.Pod) []netip.Addr {
	var out []netip.Addr
	for _, ip := range p.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// processNext handles one queued key; it returns false once the queue is
// shut down.
func (s *Source) processNext(h identity.Handler) bool {
	key, quit := s.queue.Get()
	if quit {
		return false
	}
	defer s.queue.Done(key)
	if key == syncMarker {
		h(identity.Event{Type: identity.EventSynced})
		return true
	}
	if retry := s.syncPod(key, h); retry {
		s.queue.AddRateLimited(key)
		return true
	}
	s.queue.Forget(key)
	return true
}

// syncPod brings what the handler knows of pod key in line with the
// informer's state. It returns true when the pod should be retried: it
// exists but its processes were not found.
func (s *Source) syncPod(key string, h identity.Handler) (retry bool) {
	prev := s.reported[key]
	remove := func() {
		if prev != nil {
			delete(s.reported, key)
			h(identity.Event{
				Type:              identity.EventRemoved,
				Workload:          prev.ev.Workload,
				Exclusion:         prev.ev.Exclusion,
				NamespaceEnforced: prev.ev.NamespaceEnforced,
			})
			prev = nil
		}
	}

	obj, exists, err := s.localPods.GetIndexer().GetByKey(key)
	if err != nil || !exists {
		remove()
		return false
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok || terminal(pod) || pod.Spec.NodeName != s.cfg.NodeName {
		remove()
		return false
	}
	if prev != nil && prev.ev.Workload.UID != string(pod.UID) {
		remove() // recreated under the same name
	}

	w, accelErr := s.workload(pod)
	ev := identity.Event{Workload: w}
	ev.NamespaceEnforced = ev.Workload.NamespaceLabels[identity.EnforceLabel] == identity.EnforceEnabled
	switch {
	case key == s.cfg.AgentPod:
		ev.Exclusion = identity.ExcludedSelf
	case pod.Spec.HostNetwork:
		ev.Exclusion = identity.ExcludedHostNetwork
	}

	var loc *procfs.Pod
	if ev.Exclusion == identity.NotExcluded {
		if prev != nil && prev.loc != nil && s.cfg.Locator.Alive(prev.loc.SandboxPID, prev.loc.SandboxStartTime) {
			loc = prev.loc
		} else {
			loc, err = s.find(string(pod.UID))
			if err != nil {
				// Not started yet, or its sandbox is gone: what was
				// reported no longer exists. Retry with backoff.
				remove()
				if !errors.Is(err, procfs.ErrNotFound) {
					s.log.Warn("locate pod", "pod", key, "error", err)
				}
				return true
			}
		}
		ev.Workload.NetnsPath = loc.NetnsPath
		ev.Workload.CgroupPath = loc.CgroupPath
	}

	if prev == nil {
		ev.Type = identity.EventAdded
	} else {
		ev.Type = prev.ev.Type
		if reflect.DeepEqual(prev.ev, ev) {
			prev.loc = loc
			return false // nothing the handler sees changed
		}
		ev.Type = identity.EventUpdated
	}
	if accelErr != nil {
		// Said whenever the pod is reported, not on every recheck.
		s.log.Warn("pod annotation invalid; the node's default applies", "pod", key, "error", accelErr)
	}
	s.reported[key] = &reported{ev: ev, loc: loc}
	h(copyEvent(ev))
	return false
}

// scanner is implemented by locators that can find every pod in one pass
// (*procfs.Scanner).
type scanner interface {
	Scan() (map[string]*procfs.Pod, error)
}

// scanMaxAge bounds how old a shared /proc scan may be to answer a lookup.
const scanMaxAge = 100 * time.Millisecond

// find locates a pod. With a scanner, one /proc pass answers every lookup
// made within scanMaxAge (the initial sync of a node with a hundred pods
// reads /proc once, not a hundred times); an answer whose sandbox has died
// since, or a miss in a scan that is not fresh, is checked with a new scan.
func (s *Source) find(uid string) (*procfs.Pod, error) {
	sc, ok := s.cfg.Locator.(scanner)
	if !ok {
		return s.cfg.Locator.Find(uid)
	}
	for attempt := 0; attempt < 2; attempt++ {
		fresh := false
		if s.scan == nil || time.Since(s.scanAt) > scanMaxAge {
			pods, err := sc.Scan()
			if err != nil {
				return nil, err
			}
			s.scan, s.scanAt, fresh = pods, time.Now(), true
		}
		p, ok := s.scan[uid]
		if ok && s.cfg.Locator.Alive(p.SandboxPID, p.SandboxStartTime) {
			return p, nil
		}
		if fresh {
			break
		}
		s.scan = nil // stale: look again
	}
	return nil, fmt.Errorf("find pod %s: %w", uid, procfs.ErrNotFound)
}

// workload builds the workload of a local pod from the informers' state.
// The error says the pod's LocalAccelerationAnnotation is invalid (the
// workload is then reported without a choice); the workload is complete
// either way.
func (s *Source) workload(p *corev1.Pod) (identity.Workload, error) {
	sa := serviceAccount(p)
	accel, err := acceleration(p)
	w := identity.Workload{
		Namespace:         p.Namespace,
		Name:              p.Name,
		UID:               string(p.UID),
		ServiceAccount:    sa,
		ClientID:          s.clientID(p.Namespace, sa),
		Labels:            maps.Clone(p.Labels),
		IPs:               podIPs(p),
		LocalAcceleration: accel,
	}
	obj, _, _ := s.namespaces.GetIndexer().GetByKey(p.Namespace)
	if ns, ok := obj.(*corev1.Namespace); ok {
		w.NamespaceLabels = maps.Clone(ns.Labels)
	}
	return w, err
}

// acceleration reads a pod's LocalAccelerationAnnotation: no annotation, or
// an invalid one (with an error), is identity.AccelerationDefault.
func acceleration(p *corev1.Pod) (identity.Acceleration, error) {
	v, ok := p.Annotations[identity.LocalAccelerationAnnotation]
	if !ok {
		return identity.AccelerationDefault, nil
	}
	return identity.ParseAcceleration(v)
}

// copyEvent gives the handler maps and slices of its own.
func copyEvent(ev identity.Event) identity.Event {
	ev.Workload.Labels = maps.Clone(ev.Workload.Labels)
	ev.Workload.NamespaceLabels = maps.Clone(ev.Workload.NamespaceLabels)
	ev.Workload.IPs = append([]netip.Addr(nil), ev.Workload.IPs...)
	return ev
}
