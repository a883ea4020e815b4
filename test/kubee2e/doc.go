// Package kubee2e runs portcullis-agent in Kubernetes mode against a real
// kube-apiserver and etcd on loopback (test/kubeenv): three agents play three
// nodes of one cluster, pods are network namespaces with processes in
// kubepods-shaped cgroups, their Pod objects are created through the API, and
// policies are applied with kubectl. The tests send real traffic between the
// pods and check what each node enforces; a benchmark measures one agent
// watching a large cluster. Everything lives in _test files; this file only
// carries the package documentation.
//
//	go test -count=1 -v ./test/kubee2e/                               # as root
//	go test -count=1 -run '^$' -bench AgentScale -benchtime 1x ./test/kubee2e/
package kubee2e
