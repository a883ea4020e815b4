// Package policywatch watches the portcullis.dev policy objects (Issuer,
// ClusterIssuer, AccessPolicy) with dynamic informers and hands the full set
// to a callback after every change, together with when the change was
// observed, so the agent can recompile, swap the policy set atomically and
// record portcullis_policy_propagation_seconds.
//
// It delivers unstructured objects: identity/ must not import tokencheck,
// so converting them into tokencheck/policy's v1alpha1 types is the agent's
// (runtime.DefaultUnstructuredConverter.FromUnstructured).
package policywatch

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/portcullis-mesh/portcullis/identity/kube/coreclient"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
)

// Group and Version of the policy API.
const (
	Group   = "portcullis.dev"
	Version = "v1alpha1"
)

// The watched resources.
var (
	IssuersGVR        = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "issuers"}
	ClusterIssuersGVR = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "clusterissuers"}
	AccessPoliciesGVR = schema.GroupVersionResource{Group: Group, Version: Version, Resource: "accesspolicies"}
)

// Snapshot is every policy object in the cluster at one moment.
type Snapshot struct {
	// The objects, each sorted by namespace/name. They are deep copies:
	// the callback may keep or modify them.
	Issuers        []*unstructured.Unstructured
	ClusterIssuers []*unstructured.Unstructured
	AccessPolicies []*unstructured.Unstructured
	// ObservedAt is when the watch delivered the oldest change this
	// snapshot is the first to include; for the initial snapshot, when the
	// informers finished their first list. Enforcement time minus
	// ObservedAt is the agent's share of policy propagation.
	ObservedAt time.Time
	// Initial is true for the first snapshot, delivered once every informer
	// has synced.
	Initial bool
}

// Config configures a Watcher.
type Config struct {
	// ResyncPeriod is the informers' resync period. Zero means none.
	ResyncPeriod time.Duration
	// Now returns the current time. Nil means time.Now.
	Now func() time.Time
}

// Watcher runs the informers. Create it with New, run it with Run.
type Watcher struct {
	cfg       Config
	informers map[schema.GroupVersionResource]cache.SharedIndexInformer

	mu       sync.Mutex
	pending  time.Time     // oldest unreported change; zero when none
	dirty    chan struct{} // capacity 1: a change awaits a snapshot
	running  bool
	gvrOrder []schema.GroupVersionResource
}

// New returns a Watcher using client.
func New(client dynamic.Interface, cfg Config) (*Watcher, error) {
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	w := &Watcher{
		cfg:       cfg,
		informers: map[schema.GroupVersionResource]cache.SharedIndexInformer{},
		dirty:     make(chan struct{}, 1),
		gvrOrder:  []schema.GroupVersionResource{IssuersGVR, ClusterIssuersGVR, AccessPoliciesGVR},
	}
	for _, gvr := range w.gvrOrder {
		inf := newInformer(client, gvr, cfg.ResyncPeriod)
		if err := inf.SetTransform(strip); err != nil {
			return nil, fmt.Errorf("new policy watcher: set transform: %w", err)
		}
		w.informers[gvr] = inf
	}
	return w, nil
}

// newInformer returns an informer of gvr in every namespace, indexed by
// namespace, as client-go's dynamic informer factory makes them (that
// package links every API group's typed informers).
func newInformer(client dynamic.Interface, gvr schema.GroupVersionResource, resync time.Duration) cache.SharedIndexInformer {
	res := client.Resource(gvr).Namespace(metav1.NamespaceAll)
	return cache.NewSharedIndexInformerWithOptions(
		cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, opts metav1.ListOptions) (runtime.Object, error) {
				return res.List(ctx, opts)
			},
			WatchFuncWithContext: func(ctx context.Context, opts metav1.ListOptions) (watch.Interface, error) {
				return res.Watch(ctx, opts)
			},
		}, client),
		&unstructured.Unstructured{},
		cache.SharedIndexInformerOptions{
			ResyncPeriod:      resync,
			Indexers:          cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc},
			ObjectDescription: gvr.String(),
		})
}

// strip drops what the agent never reads from a stored object: managed
// fields and kubectl's last-applied copy (which doubles an object's size).
func strip(obj any) (any, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok {
		return obj, nil
	}
	u.SetManagedFields(nil)
	if ann := u.GetAnnotations(); ann != nil {
		delete(ann, "kubectl.kubernetes.io/last-applied-configuration")
		if len(ann) == 0 {
			ann = nil
		}
		u.SetAnnotations(ann)
	}
	return u, nil
}

// Run starts the informers and calls fn with the initial snapshot once
// they have synced, then with a new snapshot after changes, until ctx ends;
// it stops the informers before returning. fn is called from one goroutine;
// changes that arrive while it runs are coalesced into the next call. Run
// returns an error when the informers do not sync before ctx ends (for
// example, the CRDs are not installed).
func (w *Watcher) Run(ctx context.Context, fn func(Snapshot)) error {
	w.mu.Lock()
	if w.running {
		w.mu.Unlock()
		return errors.New("run policy watcher: already run")
	}
	w.running = true
	w.mu.Unlock()

	var synced []cache.InformerSynced
	for _, gvr := range w.gvrOrder {
		reg, err := w.informers[gvr].AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(any) { w.changed() },
			UpdateFunc: func(old, cur any) { w.updated(old, cur) },
			DeleteFunc: func(any) { w.changed() },
		})
		if err != nil {
			return fmt.Errorf("run policy watcher: add event handler: %w", err)
		}
		synced = append(synced, reg.HasSynced)
	}
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() {
		cancel()
		wg.Wait()
	}()
	for _, gvr := range w.gvrOrder {
		inf := w.informers[gvr]
		wg.Go(func() { inf.RunWithContext(ctx) })
	}
	if !cache.WaitForCacheSync(ctx.Done(), synced...) {
		return fmt.Errorf("run policy watcher: wait for sync of %s objects: %w", Group, context.Cause(ctx))
	}

	// The initial list's events are folded into the initial snapshot.
	w.take()
	snap := w.snapshot()
	snap.Initial = true
	snap.ObservedAt = w.cfg.Now()
	fn(snap)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.dirty:
			observed := w.take()
			if observed.IsZero() {
				continue
			}
			snap := w.snapshot()
			snap.ObservedAt = observed
			fn(snap)
		}
	}
}

// updated ignores resyncs and status-only writes: neither changes what is
// enforced. Metadata changes (labels) still count.
func (w *Watcher) updated(old, cur any) {
	o, ok1 := old.(*unstructured.Unstructured)
	c, ok2 := cur.(*unstructured.Unstructured)
	if ok1 && ok2 && o.GetResourceVersion() == c.GetResourceVersion() {
		return // a resync
	}
	w.changed()
}

func (w *Watcher) changed() {
	w.mu.Lock()
	if w.pending.IsZero() {
		w.pending = w.cfg.Now()
	}
	w.mu.Unlock()
	select {
	case w.dirty <- struct{}{}:
	default:
	}
}

// take returns and clears the oldest unreported change time.
func (w *Watcher) take() time.Time {
	w.mu.Lock()
	defer w.mu.Unlock()
	t := w.pending
	w.pending = time.Time{}
	return t
}

func (w *Watcher) snapshot() Snapshot {
	return Snapshot{
		Issuers:        list(w.informers[IssuersGVR]),
		ClusterIssuers: list(w.informers[ClusterIssuersGVR]),
		AccessPolicies: list(w.informers[AccessPoliciesGVR]),
	}
}

func list(inf cache.SharedIndexInformer) []*unstructured.Unstructured {
	objs := inf.GetStore().List()
	out := make([]*unstructured.Unstructured, 0, len(objs))
	for _, o := range objs {
		if u, ok := o.(*unstructured.Unstructured); ok {
			out = append(out, u.DeepCopy())
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].GetNamespace() != out[j].GetNamespace() {
			return out[i].GetNamespace() < out[j].GetNamespace()
		}
		return out[i].GetName() < out[j].GetName()
	})
	return out
}

// Reason is the Kubernetes Event reason of a policy object the agent
// refused.
const Reason = "InvalidPolicy"

// Reporter reports policy objects the agent cannot apply as Warning Events
// on the objects (never as status writes: thousands of agents must not
// fight over one status). Events are rate-limited per object by the
// client-go correlator: a burst of Burst, then one per Interval.
type Reporter struct {
	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder
}

// ReporterConfig configures a Reporter.
type ReporterConfig struct {
	// NodeName is the reporting host, shown as the Event's source. Required.
	NodeName string
	// Burst is how many Events one object may get at once. Zero means 2.
	Burst int
	// Interval is the steady rate of Events per object after the burst.
	// Zero means one per 5 minutes.
	Interval time.Duration
}

// NewReporter returns a Reporter writing Events through client, a core/v1
// REST client from coreclient.NewForConfig. Call Shutdown when done.
func NewReporter(client rest.Interface, cfg ReporterConfig) (*Reporter, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("new policy reporter: node name is required")
	}
	if cfg.Burst == 0 {
		cfg.Burst = 2
	}
	if cfg.Interval == 0 {
		cfg.Interval = 5 * time.Minute
	}
	b := record.NewBroadcaster(record.WithCorrelatorOptions(record.CorrelatorOptions{
		BurstSize: cfg.Burst,
		QPS:       float32(1 / cfg.Interval.Seconds()),
	}))
	b.StartRecordingToSink(coreclient.EventSink{Client: client})
	return &Reporter{
		broadcaster: b,
		recorder:    b.NewRecorder(coreclient.Scheme, corev1.EventSource{Component: "portcullis-agent", Host: cfg.NodeName}),
	}, nil
}

// Invalid records a Warning Event on obj with message (which must not
// contain secrets: Events are readable by anyone who can read the object).
func (r *Reporter) Invalid(obj *unstructured.Unstructured, message string) {
	r.recorder.Event(obj, corev1.EventTypeWarning, Reason, message)
}

// Shutdown stops the Reporter; Events not yet written are dropped.
func (r *Reporter) Shutdown() { r.broadcaster.Shutdown() }
