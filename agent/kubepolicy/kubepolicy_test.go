package kubepolicy

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"github.com/portcullis-mesh/portcullis/identity"
	"github.com/portcullis-mesh/portcullis/identity/kube/policywatch"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
)

func obj(t *testing.T, y string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(y), &u.Object); err != nil {
		t.Fatal(err)
	}
	return u
}

type reports map[string]string

func (r reports) Invalid(u *unstructured.Unstructured, msg string) {
	r[u.GetKind()+" "+u.GetNamespace()+"/"+u.GetName()] = msg
}

const good = `
apiVersion: portcullis.dev/v1alpha1
kind: AccessPolicy
metadata: {name: orders, namespace: shop, generation: 1}
spec:
  selector: {matchLabels: {app: orders}}
  rules:
  - from: {workloads: [shop/frontend]}
`

func TestApply(t *testing.T) {
	store := policy.NewStore()
	rep := reports{}
	var applied *policy.Set
	var observed time.Time
	var results []Result
	cfg := Config{Store: store, Reporter: rep,
		OnApply:  func(s *policy.Set, at time.Time) { applied, observed = s, at },
		OnResult: func(r Result) { results = append(results, r) },
	}
	at := time.Unix(1000, 0)

	res := Apply(cfg, policywatch.Snapshot{AccessPolicies: []*unstructured.Unstructured{obj(t, good)}, ObservedAt: at, Initial: true})
	if applied == nil || applied.Policies() != 1 || !observed.Equal(at) {
		t.Fatalf("first snapshot: applied %v at %v, want 1 policy at %v", applied, observed, at)
	}
	if !res.Applied || res.Err != nil || res.Invalid != 0 {
		t.Errorf("first snapshot: got %+v, want applied without problems", res)
	}
	if len(rep) != 0 {
		t.Errorf("reports for a valid snapshot: %v", rep)
	}

	// A policy naming an issuer that does not exist is quarantined: the set
	// is still installed, and the object gets an Event.
	bad := obj(t, strings.Replace(good, "name: orders,", "name: broken,", 1)+"    when: {issuers: [{name: nope}]}\n")
	res = Apply(cfg, policywatch.Snapshot{AccessPolicies: []*unstructured.Unstructured{obj(t, good), bad}, ObservedAt: at})
	if got := store.Stats().Generation; got != 2 {
		t.Errorf("generation after quarantine: got %d, want 2", got)
	}
	if msg, ok := rep["AccessPolicy shop/broken"]; !ok || !strings.Contains(msg, "nope") {
		t.Errorf("report for shop/broken: got %q (reports %v), want one naming the missing issuer", msg, rep)
	}
	if !res.Applied || res.Invalid != 1 || res.Err == nil || !strings.Contains(res.Err.Error(), "shop/broken") {
		t.Errorf("result after quarantine: got %+v, want applied with 1 invalid object naming shop/broken", res)
	}

	// An object that does not even decode is quarantined the same way: it
	// no longer keeps every other change out.
	undecodable := obj(t, "apiVersion: portcullis.dev/v1alpha1\nkind: AccessPolicy\nmetadata: {name: x, namespace: shop}\nspec: {rules: 5}\n")
	res = Apply(cfg, policywatch.Snapshot{AccessPolicies: []*unstructured.Unstructured{obj(t, good), undecodable}, ObservedAt: at})
	if got := store.Stats().Generation; got != 3 {
		t.Errorf("generation after an undecodable object: got %d, want 3", got)
	}
	if applied.Policies() != 2 {
		t.Errorf("policies after an undecodable object: got %d, want 2 (shop/orders and the stand-in of shop/x)", applied.Policies())
	}
	if _, ok := rep["AccessPolicy shop/x"]; !ok {
		t.Errorf("no report for the undecodable object: %v", rep)
	}
	if !res.Applied || res.Invalid != 1 {
		t.Errorf("result after an undecodable object: got %+v, want applied with 1 invalid object", res)
	}
	if st := store.Stats(); st.Failures != 0 {
		t.Errorf("store failures: got %d, want 0 (nothing was refused)", st.Failures)
	}
	if len(results) != 3 {
		t.Errorf("OnResult calls: got %d, want 3", len(results))
	}
}

// request asks set about a GET from shop/frontend to port 8080 of a pod of
// namespace shop with the label app=app.
func request(set *policy.Set, app string) policy.Decision {
	return policy.Evaluate(set, policy.Input{
		Workload: policy.Workload{Namespace: "shop", Labels: map[string]string{"app": app}},
		Port:     8080, Method: "GET", Path: "/",
		Source: identity.Source{ID: "spiffe://cluster.local/ns/shop/sa/frontend", Namespace: "shop", ServiceAccount: "frontend"},
	})
}

func TestApplyNotUnderstood(t *testing.T) {
	const issuer = `
apiVersion: portcullis.dev/v1alpha1
kind: Issuer
metadata: {name: entra, namespace: shop}
spec:
  azureAD: {tenantID: 72f988bf-0000-4000-8000-000000000001, audiences: ["api://orders"]}
`
	// payments is valid: it must apply whatever happens to its neighbours.
	payments := strings.Replace(good, "name: orders,", "name: payments,", 1)
	payments = strings.Replace(payments, "app: orders", "app: payments", 1)
	// other is the object under test, selecting app=other.
	other := strings.Replace(strings.Replace(good, "name: orders,", "name: other,", 1), "app: orders", "app: other", 1)
	deny := strings.Replace(other, "  rules:\n", "  action: Deny\n  rules:\n", 1)
	type decision struct {
		Outcome policy.Outcome
		Reason  policy.Reason
	}
	allowed := decision{policy.OutcomeAllow, policy.ReasonAllowed}
	invalid := decision{policy.OutcomeDeny, policy.ReasonInvalidPolicy}
	for _, tc := range []struct {
		name    string
		issuer  string
		other   string
		invalid int
		// errHas is in Result.Err and in the Event on the object under test.
		errHas string
		// want are the decisions for app=orders, app=payments, app=other.
		want [3]decision
	}{{
		name:    "unknown spec field of an Allow policy",
		other:   other + "  futureField: true\n",
		invalid: 1, errHas: `unknown field "spec.futureField"`,
		want: [3]decision{allowed, allowed, invalid},
	}, {
		name:    "unknown field in a rule of a Deny policy",
		other:   deny + "    when: {deviceCompliant: true}\n",
		invalid: 1, errHas: `unknown field "spec.rules[0].when.deviceCompliant"`,
		// Dropping the field would deny only calls from shop/frontend
		// with a compliant device, a narrower Deny; the stand-in denies
		// every call.
		want: [3]decision{allowed, allowed, invalid},
	}, {
		name:    "unknown selector field: the whole namespace",
		other:   strings.Replace(other, "selector: {matchLabels: {app: other}}", "selector: {matchLabels: {app: other}, matchFuture: {}}", 1),
		invalid: 1, errHas: `unknown field "spec.selector.matchFuture"`,
		want: [3]decision{invalid, invalid, invalid},
	}, {
		name:    "wrong type in the spec",
		other:   strings.Replace(other, "  rules:\n  - from: {workloads: [shop/frontend]}\n", "  rules: 5\n", 1),
		invalid: 1, errHas: "not understood by this agent",
		want: [3]decision{allowed, allowed, invalid},
	}, {
		name:    "unknown top-level field",
		other:   other + "extension: {x: 1}\n",
		invalid: 1, errHas: `unknown field "extension"`,
		want: [3]decision{allowed, allowed, invalid},
	}, {
		name:   "unknown fields outside the spec are ignored",
		other:  strings.Replace(other, "generation: 1}", "generation: 1, futureMeta: x}", 1) + "status: {futureStatus: 1}\n",
		errHas: `unknown field "metadata.futureMeta"`,
		want:   [3]decision{allowed, allowed, allowed},
	}, {
		name:    "unknown issuer field: the issuer is left out",
		issuer:  issuer + "  requireFuture: true\n",
		other:   other + "    when: {issuers: [{name: entra}]}\n",
		invalid: 2, errHas: `unknown field "spec.requireFuture"`,
		// shop/other names the missing issuer: invalid too.
		want: [3]decision{allowed, allowed, invalid},
	}} {
		t.Run(tc.name, func(t *testing.T) {
			store := policy.NewStore()
			rep := reports{}
			var set *policy.Set
			cfg := Config{Store: store, Reporter: rep, OnApply: func(s *policy.Set, _ time.Time) { set = s }}
			snap := policywatch.Snapshot{Initial: true, AccessPolicies: []*unstructured.Unstructured{obj(t, good), obj(t, payments), obj(t, tc.other)}}
			if tc.issuer != "" {
				snap.Issuers = []*unstructured.Unstructured{obj(t, tc.issuer)}
			}
			res := Apply(cfg, snap)
			if !res.Applied || set == nil {
				t.Fatalf("Apply: got %+v, want the set applied", res)
			}
			if res.Invalid != tc.invalid {
				t.Errorf("invalid objects: got %d, want %d (problems: %v)", res.Invalid, tc.invalid, res.Err)
			}
			if tc.invalid == 0 && res.Err != nil {
				t.Errorf("problems: got %v, want none", res.Err)
			}
			if tc.invalid > 0 {
				var perr *policy.Error
				if !errors.As(res.Err, &perr) || !strings.Contains(res.Err.Error(), tc.errHas) {
					t.Errorf("problems: got %v, want a *policy.Error containing %q", res.Err, tc.errHas)
				}
				if strings.Contains(res.Err.Error(), string(notUnderstood)) {
					t.Errorf("problems: got %v, which describes the stand-in instead of the object", res.Err)
				}
			}
			var reported string
			for k, msg := range rep {
				if strings.Contains(msg, tc.errHas) {
					reported = k
				}
			}
			if reported == "" {
				t.Errorf("no Event containing %q: %v", tc.errHas, rep)
			}
			var got [3]decision
			for i, app := range []string{"orders", "payments", "other"} {
				d := request(set, app)
				got[i] = decision{d.Outcome, d.Reason}
			}
			if diff := cmp.Diff(tc.want, got); diff != "" {
				t.Errorf("decisions for orders, payments, other (-want +got):\n%s", diff)
			}
			if c := set.Capture(policy.Workload{Namespace: "shop", Labels: map[string]string{"app": "other"}}); !c.Selected || !c.AllPorts {
				t.Errorf("capture of app=other: got %+v, want every port", c)
			}
		})
	}
}

// TestApplyRestrictNamespacedIssuers: with the option, a namespaced Issuer
// naming its own key location is quarantined (left out, with an Event);
// without it, it is applied.
func TestApplyRestrictNamespacedIssuers(t *testing.T) {
	issuer := obj(t, `
apiVersion: portcullis.dev/v1alpha1
kind: Issuer
metadata: {name: entra, namespace: shop, generation: 1}
spec:
  azureAD: {tenantID: 11111111-2222-3333-4444-555555555555, authorityHost: "https://idp.example.com", audiences: [api://orders]}
`)
	for _, restrict := range []bool{false, true} {
		rep := reports{}
		res := Apply(Config{Store: policy.NewStore(), Reporter: rep, RestrictNamespacedIssuers: restrict},
			policywatch.Snapshot{Issuers: []*unstructured.Unstructured{issuer}, AccessPolicies: []*unstructured.Unstructured{obj(t, good)}, Initial: true})
		msg, reported := rep["Issuer shop/entra"]
		wantInvalid := 0
		if restrict {
			wantInvalid = 1
		}
		if !res.Applied || res.Invalid != wantInvalid || reported != restrict {
			t.Errorf("restrict=%v: got %+v, reports %v; want applied with %d invalid object(s), the Issuer reported: %v", restrict, res, rep, wantInvalid, restrict)
		}
		if restrict && !strings.Contains(msg, "authorityHost") {
			t.Errorf("restrict=%v: report %q does not name authorityHost", restrict, msg)
		}
	}
}
