package policy

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/portcullis-mesh/portcullis/tokencheck/policy/apis/v1alpha1"
)

// TestQuarantinedIssuerWithoutNamespace: an Issuer whose namespace is
// empty or invalid (objects as a client of the API server could hand
// them over; files get "default") is left out of a quarantining compile,
// not kept with Namespace "" and so trusted in every namespace like a
// ClusterIssuer (review 5b, finding 8).
func TestQuarantinedIssuerWithoutNamespace(t *testing.T) {
	for _, ns := range []string{"", "Bad_NS"} {
		t.Run("namespace "+ns, func(t *testing.T) {
			objs := &Objects{Issuers: []*v1.Issuer{{
				ObjectMeta: metav1.ObjectMeta{Name: "stray", Namespace: ns},
				Spec:       v1.IssuerSpec{OIDC: &v1.OIDCIssuer{Issuer: "https://idp.example", Audiences: []string{"a"}}},
			}}}
			set, err := CompileWithOptions(objs, Options{Quarantine: true})
			if set == nil || err == nil {
				t.Fatalf("CompileWithOptions(Quarantine) = %v, %v; want a set and a problem", set, err)
			}
			for _, is := range set.Issuers() {
				t.Errorf("issuer %q (namespace %q) kept; TrustedIn(shop) = %v", is.Ref, is.Namespace, is.TrustedIn("shop"))
			}
			if cfgs := set.IssuerConfigs(); len(cfgs) != 0 {
				t.Errorf("IssuerConfigs: got %d, want none", len(cfgs))
			}
		})
	}
}
