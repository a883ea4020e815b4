// Package kubepolicy turns the cluster's portcullis.dev objects (Issuer,
// ClusterIssuer, AccessPolicy), as identity/kube/policywatch delivers them,
// into the policy set in force: every snapshot is converted, compiled in
// quarantine mode and swapped atomically. Problems are reported as
// rate-limited Events on the offending objects — never as status writes, so
// thousands of agents do not fight over one object's status.
package kubepolicy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/portcullis-mesh/portcullis/identity/kube/policywatch"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
	v1 "github.com/portcullis-mesh/portcullis/tokencheck/policy/apis/v1alpha1"
)

// Reporter reports a refused object; *policywatch.Reporter is one.
type Reporter interface {
	Invalid(obj *unstructured.Unstructured, message string)
}

// Config configures Apply.
type Config struct {
	// Store receives every compiled set. Required.
	Store *policy.Store
	// OnApply is called after each swap with the new set and when the
	// oldest change it contains was observed; the caller makes the set
	// effective (issuers, capture) and measures propagation.
	OnApply func(set *policy.Set, observedAt time.Time)
	// Reporter receives refused objects. Nil means none are reported.
	Reporter Reporter
	// Logger receives compile results. Nil means discard.
	Logger *slog.Logger
}

// Run follows w's snapshots until ctx ends. synced is called once the first
// snapshot has been applied (or refused).
func Run(ctx context.Context, w *policywatch.Watcher, cfg Config, synced func()) error {
	if cfg.Store == nil {
		return errors.New("kubepolicy: Store is required")
	}
	return w.Run(ctx, func(s policywatch.Snapshot) {
		Apply(cfg, s)
		if s.Initial && synced != nil {
			synced()
		}
	})
}

// Apply compiles one snapshot into the store.
func Apply(cfg Config, s policywatch.Snapshot) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	objs, all, err := Objects(s, cfg.Reporter)
	if err != nil {
		// An object the agent cannot decode would silently drop a policy:
		// keep the set in force instead.
		cfg.Logger.Error("policy objects refused; the previous set stays in force", "error", err)
		return
	}
	// Quarantine: objects arrive one by one and in any order, so one bad
	// object must not freeze every update on every node. An invalid
	// AccessPolicy becomes deny-all for the pods it selects (fail closed);
	// an invalid Issuer is left out, which invalidates policies naming it.
	set, err := cfg.Store.UpdateWithOptions(objs, policy.Options{Quarantine: true})
	if err != nil {
		report(cfg.Reporter, err, all)
		if set == nil {
			cfg.Logger.Error("policy configuration refused; the previous set stays in force", "error", err)
			return
		}
		cfg.Logger.Warn("invalid policy objects quarantined (deny-all on the pods they select)", "error", err)
	}
	if cfg.OnApply != nil {
		cfg.OnApply(set, s.ObservedAt)
	}
}

// Objects converts a snapshot into a policy configuration.
func Objects(s policywatch.Snapshot, r Reporter) (*policy.Objects, []*unstructured.Unstructured, error) {
	objs := &policy.Objects{}
	var all []*unstructured.Unstructured
	var errs []error
	add := func(us []*unstructured.Unstructured, newObj func() any) {
		for _, u := range us {
			typed := newObj()
			if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, typed, true); err != nil {
				errs = append(errs, fmt.Errorf("%s %s/%s: %w", u.GetKind(), u.GetNamespace(), u.GetName(), err))
				if r != nil {
					r.Invalid(u, "decode: "+err.Error())
				}
				continue
			}
			if err := objs.Add(typed); err != nil {
				errs = append(errs, err)
				continue
			}
			all = append(all, u)
		}
	}
	add(s.Issuers, func() any { return &v1.Issuer{} })
	add(s.ClusterIssuers, func() any { return &v1.ClusterIssuer{} })
	add(s.AccessPolicies, func() any { return &v1.AccessPolicy{} })
	return objs, all, errors.Join(errs...)
}

// report turns the problems of a compile into Events on their objects.
func report(r Reporter, err error, all []*unstructured.Unstructured) {
	var perr *policy.Error
	if r == nil || !errors.As(err, &perr) {
		return
	}
	for _, p := range perr.Problems {
		for _, u := range all {
			if u.GetKind() == p.Kind && u.GetNamespace() == p.Namespace && u.GetName() == p.Name {
				msg := p.Message
				if p.Field != "" {
					msg = p.Field + ": " + msg
				}
				r.Invalid(u, msg)
			}
		}
	}
}
