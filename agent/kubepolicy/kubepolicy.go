// Package kubepolicy follows the portcullis.dev objects of the cluster
// (Issuer, ClusterIssuer, AccessPolicy) with informers and keeps the policy
// store in step: every change recompiles the whole configuration and swaps it
// atomically, or, when the configuration is invalid, keeps the set in force
// and reports the problem as a rate-limited Event on the offending object —
// never as a status write, so thousands of agents do not fight over one
// object's status.
package kubepolicy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/dynamic/dynamicinformer"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"

	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
	v1 "github.com/portcullis-mesh/portcullis/tokencheck/policy/apis/v1alpha1"
)

// Resources are the watched resources.
var Resources = []schema.GroupVersionResource{
	v1.GroupVersion.WithResource("issuers"),
	v1.GroupVersion.WithResource("clusterissuers"),
	v1.GroupVersion.WithResource("accesspolicies"),
}

// Config configures a Watcher.
type Config struct {
	// Client reads the objects. Required.
	Client dynamic.Interface
	// Store receives every compiled set. Required.
	Store *policy.Store
	// OnApply is called after each successful swap with the new set and
	// the time the oldest change it contains was received; the caller
	// makes the set effective (issuers, capture) and measures propagation.
	OnApply func(set *policy.Set, changedAt time.Time)
	// Recorder reports refused configurations as Events on the objects.
	// Nil means no Events.
	Recorder record.EventRecorder
	// Coalesce is how long to wait for more changes before compiling, so a
	// `kubectl apply -f dir/` is one compile. Zero means 20ms.
	Coalesce time.Duration
	// Logger receives compile results. Nil means discard.
	Logger *slog.Logger
}

// Watcher follows the policy objects.
type Watcher struct {
	cfg  Config
	log  *slog.Logger
	f    dynamicinformer.DynamicSharedInformerFactory
	kick chan struct{}

	mu      sync.Mutex
	pending time.Time // receipt time of the oldest unapplied change
}

// New returns a Watcher.
func New(cfg Config) (*Watcher, error) {
	if cfg.Client == nil || cfg.Store == nil {
		return nil, errors.New("kubepolicy: Client and Store are required")
	}
	if cfg.Coalesce == 0 {
		cfg.Coalesce = 20 * time.Millisecond
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Watcher{cfg: cfg, log: log, f: dynamicinformer.NewDynamicSharedInformerFactory(cfg.Client, 0), kick: make(chan struct{}, 1)}, nil
}

// Run starts the informers, applies the first complete configuration, then
// follows changes until ctx ends. It returns an error only when the first
// sync cannot complete.
func (w *Watcher) Run(ctx context.Context, synced func()) error {
	h := cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { w.changed() },
		UpdateFunc: func(old, cur any) { w.changedIfNew(old, cur) },
		DeleteFunc: func(any) { w.changed() },
	}
	for _, r := range Resources {
		if _, err := w.f.ForResource(r).Informer().AddEventHandler(h); err != nil {
			return fmt.Errorf("watch %s: %w", r.Resource, err)
		}
	}
	w.f.Start(ctx.Done())
	defer w.f.Shutdown()
	for r, ok := range w.f.WaitForCacheSync(ctx.Done()) {
		if !ok {
			return fmt.Errorf("sync %s: %w", r.Resource, context.Cause(ctx))
		}
	}
	w.apply()
	if synced != nil {
		synced()
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-w.kick:
		}
		// Coalesce a burst of changes into one compile.
		t := time.NewTimer(w.cfg.Coalesce)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
		w.apply()
	}
}

func (w *Watcher) changedIfNew(old, cur any) {
	o, ok1 := old.(*unstructured.Unstructured)
	c, ok2 := cur.(*unstructured.Unstructured)
	// Resyncs, status and metadata-only updates leave the generation (the
	// spec's version) unchanged: they do not change the configuration.
	if ok1 && ok2 && o.GetGeneration() == c.GetGeneration() && o.GetGeneration() != 0 {
		return
	}
	w.changed()
}

func (w *Watcher) changed() {
	w.mu.Lock()
	if w.pending.IsZero() {
		w.pending = time.Now()
	}
	w.mu.Unlock()
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// Objects converts the informers' current state into a configuration.
func (w *Watcher) Objects() (*policy.Objects, []runtime.Object, error) {
	objs := &policy.Objects{}
	var all []runtime.Object
	var errs []error
	for _, r := range Resources {
		items, err := w.f.ForResource(r).Lister().List(labels.Everything())
		if err != nil {
			return nil, nil, fmt.Errorf("list %s: %w", r.Resource, err)
		}
		for _, it := range items {
			u, ok := it.(*unstructured.Unstructured)
			if !ok {
				continue
			}
			var typed any
			switch r.Resource {
			case "issuers":
				typed = &v1.Issuer{}
			case "clusterissuers":
				typed = &v1.ClusterIssuer{}
			default:
				typed = &v1.AccessPolicy{}
			}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, typed, true); err != nil {
				errs = append(errs, fmt.Errorf("%s %s/%s: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err))
				w.event(u, "decode: "+err.Error())
				continue
			}
			if err := objs.Add(typed); err != nil {
				errs = append(errs, err)
				continue
			}
			all = append(all, u)
		}
	}
	return objs, all, errors.Join(errs...)
}

func (w *Watcher) apply() {
	w.mu.Lock()
	changedAt := w.pending
	w.pending = time.Time{}
	w.mu.Unlock()
	if changedAt.IsZero() {
		changedAt = time.Now()
	}
	objs, all, err := w.Objects()
	if err != nil {
		// An object the agent cannot even decode makes the configuration
		// incomplete: keep the set in force rather than drop a policy.
		w.log.Error("policy objects refused; the previous set stays in force", "error", err)
		return
	}
	// Quarantine: objects arrive one by one and in any order, so one bad
	// object must not freeze every update on every node. An invalid
	// AccessPolicy becomes deny-all for the pods it selects (fail closed);
	// an invalid Issuer is left out, which invalidates policies naming it.
	set, err := w.cfg.Store.UpdateWithOptions(objs, policy.Options{Quarantine: true})
	if err != nil {
		w.report(err, all)
		if set == nil {
			w.log.Error("policy configuration refused; the previous set stays in force", "error", err)
			return
		}
		w.log.Warn("invalid policy objects quarantined (deny-all on the pods they select)", "error", err)
	}
	if w.cfg.OnApply != nil {
		w.cfg.OnApply(set, changedAt)
	}
}

// report turns the problems of a refused configuration into Events on the
// objects they are about.
func (w *Watcher) report(err error, all []runtime.Object) {
	var perr *policy.Error
	if !errors.As(err, &perr) {
		return
	}
	for _, p := range perr.Problems {
		for _, o := range all {
			u := o.(*unstructured.Unstructured)
			if u.GetKind() == p.Kind && u.GetNamespace() == p.Namespace && u.GetName() == p.Name {
				msg := p.Message
				if p.Field != "" {
					msg = p.Field + ": " + msg
				}
				w.event(u, msg)
			}
		}
	}
}

func (w *Watcher) event(u *unstructured.Unstructured, msg string) {
	if w.cfg.Recorder == nil {
		return
	}
	w.cfg.Recorder.Event(u, corev1.EventTypeWarning, "InvalidPolicy", "refused by portcullis-agent; the previous policy set stays in force: "+msg)
}
