// Package e2e holds Portcullis's end-to-end tests: the portcullis-agent,
// devidp and demoapp binaries built from this tree, real eBPF capture on
// network-namespace pods, and real clients (Go's net/http, curl, a gRPC
// client, a WebSocket client) making the requests an operator would make.
//
// The tests need root (testenv.RequirePrivileged). Every test builds its own
// pods on its own bridge, runs its own agent with a pin directory below
// /sys/fs/bpf/portcullis/e2e-<pid>-..., and removes all of it when it ends,
// also when it fails. One devidp serves every test of a run on a free
// loopback port.
//
// The pods' application is this test binary re-executed (see runApp): it
// serves HTTP/1.1 and h2c on appPort, the gRPC health service on grpcPort,
// and counts every connection and request it receives on statsPort, which
// is bound to the pod's loopback and so is never captured.
package e2e
