// Package testenv holds helpers for tests that need the real kernel: the
// privileged-test gate and a harness that makes "pods" the way the kernel
// sees them. It is imported only from _test.go files and from test/.
//
// RequirePrivileged skips a test without root, or fails it when
// PORTCULLIS_REQUIRE_PRIVILEGED=1 (CI) so that kernel tests cannot silently
// stop running.
//
// A Network is a Linux bridge in the host netns with its own IPv4 subnet
// from 198.18.0.0/15 (RFC 2544 benchmarking range) and IPv6 /64 from
// fd00::/8 (ULA); the host holds the first address of each, so tests in the
// host netns reach every pod and pods reach each other over the bridge.
// Network.NewPod creates a pod: a named network namespace (NetnsPath is
// /run/netns/<name>), a veth pair with "eth0" inside the pod and the other
// end on the bridge, one IPv4 and one IPv6 address, a cgroup v2 directory
// (optionally with a container child cgroup, PodOptions.ContainerCgroup;
// with PodOptions.NoInterface the veth comes later, from Pod.AddInterface)
// and, unless PodOptions.NoProcess, a real process inside both: the test
// binary re-executed as a small HTTP server on PodOptions.AppPorts. The
// process answers every request with
//
//	app=<pod name> port=<port> local=<local addr> remote=<remote addr>
//
// and is driven over its stdin/stdout, never over the network, so capture
// cannot interfere with the harness: Pod.Accepted reports how many
// connections the app accepted on a port, Pod.Get makes the pod's process
// open a connection (from inside the pod's netns and cgroup) and send an
// HTTP request. Everything is removed with t.Cleanup, also when the test
// fails; names include a random suffix so packages can run in parallel.
//
// Re-executing the test binary needs one line in the test package:
//
//	func TestMain(m *testing.M) { testenv.Main(m) }
package testenv
