package policy_test

import (
	"fmt"

	"github.com/portcullis-mesh/portcullis/identity"
	"github.com/portcullis-mesh/portcullis/tokencheck"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
)

func ExampleEvaluate() {
	objs, err := policy.Load("policies.yaml", []byte(`
apiVersion: portcullis.dev/v1alpha1
kind: AccessPolicy
metadata: {name: orders-api, namespace: shop}
spec:
  selector: {matchLabels: {app: orders}}
  rules:
  - from: {workloads: [web/frontend]}
    to: {methods: [GET], paths: ["/orders/*"]}
    when: {roles: {anyOf: [Orders.Read]}, tokenBoundToSource: true}
`))
	if err != nil {
		fmt.Println(err)
		return
	}
	set, err := policy.Compile(objs)
	if err != nil {
		fmt.Println(err)
		return
	}
	caller := identity.Source{ID: "spiffe://cluster.local/ns/web/sa/frontend", Namespace: "web", ServiceAccount: "frontend", ClientID: "app-1"}
	in := policy.Input{
		Workload: policy.Workload{Namespace: "shop", Labels: map[string]string{"app": "orders"}},
		Port:     8080, Method: "GET", Path: "/orders/42", Host: "orders.shop",
		Source: caller,
		Claims: &tokencheck.Claims{ClientID: "app-1", Roles: []string{"Orders.Read"}},
	}
	d := policy.Evaluate(set, in)
	fmt.Println(d.Outcome, d.Status, d.Reason, d.Policy, d.Rule)

	in.Claims, in.TokenReason = nil, tokencheck.ReasonMissingToken
	d = policy.Evaluate(set, in)
	fmt.Println(d.Outcome, d.Status, d.Reason)

	in.Claims = &tokencheck.Claims{ClientID: "app-2", Roles: []string{"Orders.Read"}} // replayed from another workload
	d = policy.Evaluate(set, in)
	fmt.Println(d.Outcome, d.Status, d.Reason)
	// Output:
	// allow 200 allowed shop/orders-api 0
	// deny 401 token_missing
	// deny 403 token_not_bound_to_source
}
