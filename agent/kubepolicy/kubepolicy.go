// Package kubepolicy turns the cluster's portcullis.dev objects (Issuer,
// ClusterIssuer, AccessPolicy), as identity/kube/policywatch delivers them,
// into the policy set in force: every snapshot is converted, compiled in
// quarantine mode and swapped atomically. Problems are reported as
// rate-limited Events on the offending objects — never as status writes, so
// thousands of agents do not fight over one object's status.
//
// One object never freezes the others, and an object the agent cannot
// apply as written never widens access:
//
//   - An invalid AccessPolicy becomes deny-all for the pods it selects; an
//     invalid Issuer or ClusterIssuer is left out, so the policies naming it
//     are invalid too (policy.Options.Quarantine).
//   - An object this agent does not understand — a spec field its types lack
//     (typically a CRD newer than the agent) or a value of the wrong type —
//     is treated the same way: an AccessPolicy becomes deny-all for the pods
//     its selector selects (every pod of its namespace when the selector
//     itself is not understood), whatever its action and mode; an Issuer is
//     left out. Dropping the unknown field instead could widen access: it
//     may be a condition of an Allow rule, or an alternative of a Deny rule.
//   - Unknown fields outside the spec (metadata, status) change nothing the
//     agent enforces: they are ignored, with a warning.
package kubepolicy

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"

	"github.com/portcullis-mesh/portcullis/identity/kube/policywatch"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
	v1 "github.com/portcullis-mesh/portcullis/tokencheck/policy/apis/v1alpha1"
)

// Reporter reports an object not applied as written (invalid, not
// understood, or with fields ignored) as a Warning Event on it;
// *policywatch.Reporter is one.
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
	// OnResult is called after every snapshot, applied or refused, with
	// what became of it (for status and metrics). Nil means none.
	OnResult func(Result)
	// Reporter receives refused objects. Nil means none are reported.
	Reporter Reporter
	// Logger receives compile results. Nil means discard.
	Logger *slog.Logger
	// RestrictNamespacedIssuers is policy.Options.RestrictNamespacedIssuers.
	// False allows every Issuer its own URLs.
	RestrictNamespacedIssuers bool
}

// Result is what became of one snapshot.
type Result struct {
	// Applied is true when the snapshot's set was installed. False means
	// it was refused and the previous set stays in force; the Store counts
	// the refusal in StoreStats.Failures.
	Applied bool
	// Err lists, when Applied, the objects the set in force does not apply
	// as written (invalid or not understood by this agent), as a
	// *policy.Error; otherwise it says why the snapshot was refused. Nil
	// when the snapshot was applied without problems.
	Err error
	// Invalid counts, when Applied, the objects Err lists: AccessPolicies
	// quarantined as deny-all and Issuers left out.
	Invalid int
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

// Apply compiles one snapshot into the store and returns (and passes to
// cfg.OnResult) what became of it.
func Apply(cfg Config, s policywatch.Snapshot) Result {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	c := convert(s, cfg.Reporter, cfg.Logger)
	// Quarantine: objects arrive one by one and in any order, so one bad
	// object must not freeze every update on every node. An invalid
	// AccessPolicy becomes deny-all for the pods it selects (fail closed);
	// an invalid Issuer is left out, which invalidates policies naming it.
	set, err := cfg.Store.UpdateWithOptions(c.objs, policy.Options{Quarantine: true, RestrictNamespacedIssuers: cfg.RestrictNamespacedIssuers})
	if set == nil {
		// Only an internal error refuses a quarantine compile; the Store
		// counted it.
		cfg.Logger.Error("policy configuration refused; the previous set stays in force", "error", err)
		res := Result{Err: err}
		if cfg.OnResult != nil {
			cfg.OnResult(res)
		}
		return res
	}
	report(cfg.Reporter, err, c.reportable)
	res := Result{Applied: true}
	if perr := c.problems(err); perr != nil {
		res.Err, res.Invalid = perr, countObjects(perr.Problems)
		cfg.Logger.Warn("policy objects quarantined (deny-all on the pods they select; issuers left out)",
			"objects", res.Invalid, "error", perr)
	}
	if cfg.OnApply != nil {
		cfg.OnApply(set, s.ObservedAt)
	}
	if cfg.OnResult != nil {
		cfg.OnResult(res)
	}
	return res
}

// notUnderstood is the mode of the stand-in of an AccessPolicy the agent
// cannot decode. No agent accepts it, so the compiler quarantines the
// stand-in exactly as it does an invalid policy: deny-all for the pods
// its selector selects, with the reason invalid_policy.
const notUnderstood v1.Mode = "NotUnderstoodByThisAgent"

// conversion is a snapshot converted for compilation.
type conversion struct {
	objs *policy.Objects
	// reportable are the objects whose compile problems become Events:
	// every object given to the compiler as written.
	reportable []*unstructured.Unstructured
	// undecoded are the problems of the objects not understood, which
	// stand in for the compiler's problems about their stand-ins.
	undecoded []policy.Problem
	standIns  map[objectKey]bool
}

type objectKey struct{ kind, namespace, name string }

// problems merges the decode problems with the compiler's (err, from a
// quarantine compile), leaving out what the compiler said about stand-ins.
func (c *conversion) problems(err error) *policy.Error {
	ps := append([]policy.Problem(nil), c.undecoded...)
	var perr *policy.Error
	if errors.As(err, &perr) {
		for _, p := range perr.Problems {
			if !c.standIns[objectKey{p.Kind, p.Namespace, p.Name}] {
				ps = append(ps, p)
			}
		}
	} else if err != nil {
		ps = append(ps, policy.Problem{Message: err.Error()})
	}
	if len(ps) == 0 {
		return nil
	}
	return &policy.Error{Problems: ps}
}

func countObjects(ps []policy.Problem) int {
	seen := make(map[objectKey]bool)
	for _, p := range ps {
		seen[objectKey{p.Kind, p.Namespace, p.Name}] = true
	}
	return len(seen)
}

// convert decodes a snapshot's objects, reporting the ones it cannot take
// as written.
func convert(s policywatch.Snapshot, r Reporter, log *slog.Logger) *conversion {
	c := &conversion{objs: &policy.Objects{}, standIns: make(map[objectKey]bool)}
	add := func(us []*unstructured.Unstructured, newObj func() any, newSpec func() any) {
		for _, u := range us {
			typed, ignored, err := decode(u, newObj, newSpec)
			if ignored != nil {
				log.Warn("policy object: ignoring fields this agent does not know (outside the spec)",
					"kind", u.GetKind(), "namespace", u.GetNamespace(), "name", u.GetName(), "error", ignored)
				if r != nil {
					r.Invalid(u, "fields outside the spec ignored by this agent: "+ignored.Error())
				}
			}
			if err == nil {
				_ = c.objs.Add(typed) // one of the supported types
				c.reportable = append(c.reportable, u)
				continue
			}
			p := policy.Problem{Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName()}
			if u.GetKind() == v1.KindAccessPolicy {
				p.Message = "not understood by this agent (" + err.Error() + "): denies every request to the pods it selects"
				_ = c.objs.Add(standIn(u))
				c.standIns[objectKey{p.Kind, p.Namespace, p.Name}] = true
			} else {
				p.Message = "not understood by this agent (" + err.Error() + "): left out, so policies naming it deny every request"
			}
			c.undecoded = append(c.undecoded, p)
			if r != nil {
				r.Invalid(u, p.Message)
			}
		}
	}
	add(s.Issuers, func() any { return &v1.Issuer{} }, func() any { return &v1.IssuerSpec{} })
	add(s.ClusterIssuers, func() any { return &v1.ClusterIssuer{} }, func() any { return &v1.IssuerSpec{} })
	add(s.AccessPolicies, func() any { return &v1.AccessPolicy{} }, func() any { return &v1.AccessPolicySpec{} })
	return c
}

// decode converts u strictly. When that fails only because of fields
// outside the spec, it converts u without them and returns the strict error
// as ignored; any problem in the spec (or beside it) is err.
func decode(u *unstructured.Unstructured, newObj, newSpec func() any) (typed any, ignored, err error) {
	conv := runtime.DefaultUnstructuredConverter
	typed = newObj()
	strict := conv.FromUnstructuredWithValidation(u.Object, typed, true)
	if strict == nil {
		return typed, nil, nil
	}
	for k := range u.Object {
		switch k {
		case "apiVersion", "kind", "metadata", "spec", "status":
		default:
			return nil, nil, fmt.Errorf("decode: unknown field %q", k)
		}
	}
	if spec, ok := u.Object["spec"]; ok {
		m, ok := spec.(map[string]any)
		if !ok {
			return nil, nil, fmt.Errorf("decode spec: %T, want an object", spec)
		}
		if err := conv.FromUnstructuredWithValidation(m, newSpec(), true); err != nil {
			return nil, nil, fmt.Errorf("decode: %w", strict)
		}
	}
	// The agent never reads the status, and reads only the identity of
	// the metadata.
	rest := make(map[string]any, len(u.Object))
	for k, v := range u.Object {
		if k != "status" {
			rest[k] = v
		}
	}
	typed = newObj()
	if err := conv.FromUnstructured(rest, typed); err != nil {
		return nil, nil, fmt.Errorf("decode: %w", err)
	}
	return typed, strict, nil
}

// standIn returns what the compiler gets for an AccessPolicy the agent
// cannot decode: its identity, its selector when that alone decodes, and a
// mode the compiler refuses, so that it quarantines it.
func standIn(u *unstructured.Unstructured) *v1.AccessPolicy {
	ap := &v1.AccessPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: u.GetNamespace(), Name: u.GetName()},
		Spec:       v1.AccessPolicySpec{Mode: notUnderstood},
	}
	if spec, ok := u.Object["spec"].(map[string]any); ok {
		if m, ok := spec["selector"].(map[string]any); ok {
			sel := &metav1.LabelSelector{}
			if runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(m, sel, true) == nil {
				ap.Spec.Selector = sel
			}
		}
	}
	return ap
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
