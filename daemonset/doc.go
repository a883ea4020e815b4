// Package daemonset holds no code: it is the Kubernetes packaging of the
// agent (a kustomize base, a Helm chart, CRDs, a Grafana dashboard) and the
// tests that decode every manifest strictly into the Kubernetes API types,
// assert the capabilities and RBAC rules, and apply everything with a
// server-side dry run to a real API server (test/kubeenv).
package daemonset
