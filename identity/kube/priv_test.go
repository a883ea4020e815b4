package kube

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/bpf/testenv"
	"github.com/portcullis-mesh/portcullis/identity"
	"github.com/portcullis-mesh/portcullis/identity/procfs"
	"golang.org/x/sys/unix"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestSourceRealProcesses runs the whole path: a Pod created through the API
// server, its "sandbox" a real process named pause in a real cgroup named
// after the pod's UID (systemd driver layout) and a new network namespace,
// found by the real /proc scanner.
func TestSourceRealProcesses(t *testing.T) {
	testenv.RequirePrivileged(t)
	h := newHarness(t)
	scanner, err := procfs.NewScanner(procfs.Config{})
	if err != nil {
		t.Fatal(err)
	}
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	pause := filepath.Join(t.TempDir(), "pause")
	if err := os.Symlink(sleep, pause); err != nil {
		t.Fatal(err)
	}

	h.namespace("real", nil)
	pod := h.pod(podSpec{ns: "real", name: "web", node: node, ip: "10.9.0.1"})
	podRel := filepath.Join(fmt.Sprintf("portcullis-kube-test-%d-%d", os.Getpid(), time.Now().UnixNano()),
		"kubepods.slice", "kubepods-besteffort.slice", procfs.SystemdSliceName(string(pod.UID), procfs.QoSBestEffort))
	root := scanner.CgroupRoot()
	podDir := mkdirCgroup(t, root, podRel)

	src, err := New(h.core, Config{NodeName: node, Locator: scanner, RetryMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(h.ctx)
	done := make(chan error, 1)
	go func() { done <- src.Run(ctx, func(ev identity.Event) { h.events <- ev }) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	if ev := h.next(); ev.Type != identity.EventSynced {
		t.Fatalf("got %s %s, want synced first (the pod has no process yet)", ev.Type, ev.Workload.Key())
	}

	// The sandbox starts after the agent: the retry finds it.
	sb := startSandbox(t, mkdirCgroup(t, root, filepath.Join(podRel, "cri-containerd-sb1.scope")), pause)
	ev := h.settle("real/web")
	want := fmt.Sprintf("/proc/%d/ns/net", sb.Process.Pid)
	if ev.Type != identity.EventAdded || ev.Workload.NetnsPath != want || ev.Workload.CgroupPath != podDir {
		t.Fatalf("got %s netns %q cgroup %q; want added, %s, %s", ev.Type, ev.Workload.NetnsPath, ev.Workload.CgroupPath, want, podDir)
	}

	// The sandbox is recreated (new netns); the kubelet's status update
	// makes the source look again.
	stop(sb)
	sb2 := startSandbox(t, mkdirCgroup(t, root, filepath.Join(podRel, "cri-containerd-sb2.scope")), pause)
	pod.Labels = map[string]string{"restarted": "1"}
	if _, err := h.client.CoreV1().Pods("real").Update(h.ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	ev = h.next()
	want = fmt.Sprintf("/proc/%d/ns/net", sb2.Process.Pid)
	if ev.Type != identity.EventUpdated || ev.Workload.NetnsPath != want {
		t.Fatalf("after sandbox restart: got %s netns %q; want updated, %s", ev.Type, ev.Workload.NetnsPath, want)
	}

	// Deleted through the API while running: removed.
	h.deletePod("real", "web")
	if ev := h.next(); ev.Type != identity.EventRemoved || ev.Workload.Key() != "real/web" {
		t.Fatalf("got %s %s, want removed real/web", ev.Type, ev.Workload.Key())
	}
}

// mkdirCgroup creates rel (and missing parents) under root, removing them
// deepest first when the test ends.
func mkdirCgroup(t *testing.T, root, rel string) string {
	t.Helper()
	dir := filepath.Join(root, rel)
	var created []string
	for d := dir; d != root; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		}
		created = append(created, d)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		for _, d := range created {
			if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("remove cgroup: %v", err)
			}
		}
	})
	return dir
}

// startSandbox runs pause in cgroupDir (CLONE_INTO_CGROUP) and a new
// network namespace, killed when the test ends.
func startSandbox(t *testing.T, cgroupDir, pause string) *exec.Cmd {
	t.Helper()
	fd, err := unix.Open(cgroupDir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open cgroup: %v", err)
	}
	defer unix.Close(fd)
	cmd := exec.Command(pause, "1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd, Cloneflags: syscall.CLONE_NEWNET}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start sandbox: %v", err)
	}
	t.Cleanup(func() { stop(cmd) })
	return cmd
}

func stop(cmd *exec.Cmd) {
	if cmd.ProcessState != nil {
		return
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}
