package main

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/portcullis-mesh/portcullis/bpf/testenv"
)

// The test binary runs the agent's main when this variable is set, so a
// test can signal a real agent process and read its exit status.
const runAgentEnv = "PORTCULLIS_TEST_RUN_AGENT"

func TestMain(m *testing.M) {
	if os.Getenv(runAgentEnv) == "1" {
		os.Args = append([]string{"portcullis-agent"}, strings.Fields(os.Getenv(runAgentEnv+"_ARGS"))...)
		main()
	}
	os.Exit(m.Run())
}

// TestSignalDuringStart stops an agent with SIGTERM while it waits for its
// first policy sync, from an API server that accepts connections and never
// answers: a rollout's normal stop, which must exit 0 without an error.
func TestSignalDuringStart(t *testing.T) {
	testenv.RequirePrivileged(t)
	dir := t.TempDir()

	// The pins go to a bpffs of the test's own (kubernetes mode refuses
	// any other file system).
	bpffs := filepath.Join(dir, "bpffs")
	if err := os.Mkdir(bpffs, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := unix.Mount("bpffs", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs: %v", err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(bpffs, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", bpffs, err)
		}
	})

	// An API server that never answers.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	accepted := make(chan net.Conn, 16)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			accepted <- c
		}
	}()
	t.Cleanup(func() {
		for {
			select {
			case c := <-accepted:
				c.Close()
			default:
				return
			}
		}
	})

	kubeconfig := filepath.Join(dir, "kubeconfig")
	write(t, kubeconfig, fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "http://%s"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`, ln.Addr()))
	cfg := filepath.Join(dir, "agent.yaml")
	write(t, cfg, fmt.Sprintf(`mode: kubernetes
nodeName: node-signal
adminAddress: "off"
debugSocket: "off"
pinDir: %s
teardownOnExit: true
shutdownGrace: 1s
kubernetes: {kubeconfig: %s}
audit: {path: %s}
log: {format: text}
`, filepath.Join(bpffs, "agent"), kubeconfig, filepath.Join(dir, "audit.log")))

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), runAgentEnv+"=1", runAgentEnv+"_ARGS=--config="+cfg)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			<-exited
		}
	})

	// The agent's informers connect once it waits for the first sync.
	select {
	case <-accepted:
	case err := <-exited:
		t.Fatalf("agent exited before it connected to the API server: %v\n%s", err, &stderr)
	case <-time.After(30 * time.Second):
		t.Fatalf("agent did not connect to the API server within 30s\n%s", &stderr)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Errorf("agent stopped during start: got %v, want exit status 0\n%s", err, &stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("agent still running 30s after SIGTERM\n%s", &stderr)
	}
	if out := stderr.String(); strings.Contains(out, "level=ERROR") || !strings.Contains(out, "agent stopped while starting") {
		t.Errorf("agent log: got\n%s\nwant no error, and the stop while starting", out)
	}
	if _, err := os.Stat(filepath.Join(bpffs, "agent")); !os.IsNotExist(err) {
		t.Errorf("pin directory after teardownOnExit: got %v, want it removed", err)
	}
}

func write(t *testing.T, path, body string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
}
