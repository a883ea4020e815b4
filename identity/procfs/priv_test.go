package procfs

import (
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/portcullis-mesh/portcullis/bpf/testenv"
	"golang.org/x/sys/unix"
)

func randomUID(t *testing.T) string {
	t.Helper()
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatal(err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// mkCgroup creates dir (and its parents) in the cgroup v2 hierarchy and
// removes them, deepest first, when the test ends.
func mkCgroup(t *testing.T, root, rel string) string {
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
		for _, d := range created { // deepest first
			if err := os.Remove(d); err != nil && !errors.Is(err, os.ErrNotExist) {
				t.Errorf("remove cgroup: %v", err)
			}
		}
	})
	return dir
}

// startIn starts argv with its process placed in cgroup dir at clone time
// (CLONE_INTO_CGROUP), optionally in a new network namespace, and kills it
// when the test ends.
func startIn(t *testing.T, cgroupDir string, newNetns bool, argv ...string) *exec.Cmd {
	t.Helper()
	fd, err := unix.Open(cgroupDir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatalf("open cgroup: %v", err)
	}
	defer unix.Close(fd)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd, Pdeathsig: syscall.SIGKILL}
	if newNetns {
		cmd.SysProcAttr.Cloneflags = syscall.CLONE_NEWNET
	}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v in %s: %v", argv, cgroupDir, err)
	}
	t.Cleanup(func() { kill(cmd) })
	return cmd
}

func kill(cmd *exec.Cmd) {
	if cmd.ProcessState != nil {
		return
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatalf("stat %s: %v", path, err)
	}
	return st.Ino
}

// TestScanRealProcesses runs a "pod" as real processes in real cgroups: a
// sandbox named pause owning a new network namespace, and an app container
// that joins it, laid out as the systemd and the cgroupfs drivers do.
func TestScanRealProcesses(t *testing.T) {
	testenv.RequirePrivileged(t)
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	nsenter, err := exec.LookPath("nsenter")
	if err != nil {
		t.Fatal(err)
	}
	// comm is the base name of the executed path: a symlink named pause
	// makes sleep look like the pause container.
	bin := t.TempDir()
	pause := filepath.Join(bin, "pause")
	if err := os.Symlink(sleep, pause); err != nil {
		t.Fatal(err)
	}

	s, err := NewScanner(Config{})
	if err != nil {
		t.Fatal(err)
	}
	root := s.CgroupRoot()
	parent := fmt.Sprintf("portcullis-procfs-test-%d-%s", os.Getpid(), randomUID(t)[:8])

	tests := []struct {
		name     string
		podDir   func(uid string) string
		sandbox  string // executable of the sandbox
		wantSBIx int    // which process is the sandbox: 0 the first, 1 the second
		driver   Driver
		qos      QoS
	}{
		{
			name: "systemd",
			podDir: func(uid string) string {
				return filepath.Join(parent, "kubepods.slice", "kubepods-burstable.slice", SystemdSliceName(uid, QoSBurstable))
			},
			sandbox: pause, driver: DriverSystemd, qos: QoSBurstable,
		},
		{
			name: "cgroupfs",
			podDir: func(uid string) string {
				return filepath.Join(parent, "kubepods", "besteffort", "pod"+uid)
			},
			sandbox: sleep, driver: DriverCgroupfs, qos: QoSBestEffort,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			uid := randomUID(t)
			podRel := tt.podDir(uid)
			podDir := mkCgroup(t, root, podRel)
			sbDir := mkCgroup(t, root, filepath.Join(podRel, "cri-containerd-sandbox.scope"))
			appDir := mkCgroup(t, root, filepath.Join(podRel, "cri-containerd-app.scope"))

			sb := startIn(t, sbDir, true, tt.sandbox, "1000")
			sbNetns := fmt.Sprintf("/proc/%d/ns/net", sb.Process.Pid)
			app := startIn(t, appDir, false, nsenter, "--net="+sbNetns, sleep, "1000")

			got, err := s.Find(uid)
			if err != nil {
				t.Fatalf("Find: %v", err)
			}
			if diff := cmp.Diff(&Pod{
				UID: uid, Driver: tt.driver, QoS: tt.qos,
				Cgroup: "/" + podRel, CgroupPath: podDir,
				SandboxPID: sb.Process.Pid, SandboxStartTime: got.SandboxStartTime,
				NetnsPath: sbNetns,
				PIDs:      sortedPIDs(sb.Process.Pid, app.Process.Pid),
			}, got); diff != "" {
				t.Errorf("Find mismatch (-want +got):\n%s", diff)
			}
			if got.SandboxStartTime == 0 {
				t.Errorf("SandboxStartTime is 0")
			}
			if host, pod := inode(t, "/proc/self/ns/net"), inode(t, got.NetnsPath); host == pod {
				t.Errorf("NetnsPath %s is the host network namespace", got.NetnsPath)
			}

			if !s.Alive(got.SandboxPID, got.SandboxStartTime) {
				t.Errorf("Alive(%d, %d) = false for the running sandbox", got.SandboxPID, got.SandboxStartTime)
			}
			if s.Alive(got.SandboxPID, got.SandboxStartTime+1) {
				t.Errorf("Alive with another start time = true, want false (PID reuse)")
			}

			// A container restart: the app exits, the sandbox stays.
			kill(app)
			got, err = s.Find(uid)
			if err != nil {
				t.Fatalf("Find after app exit: %v", err)
			}
			if got.SandboxPID != sb.Process.Pid || len(got.PIDs) != 1 {
				t.Errorf("after app exit: got sandbox %d, PIDs %v; want sandbox %d alone", got.SandboxPID, got.PIDs, sb.Process.Pid)
			}

			// The pod is gone.
			sbStart := got.SandboxStartTime
			kill(sb)
			if s.Alive(sb.Process.Pid, sbStart) {
				t.Errorf("Alive after the sandbox exited = true")
			}
			if _, err := s.Find(uid); !errors.Is(err, ErrNotFound) {
				t.Errorf("Find after pod exit: got %v, want ErrNotFound", err)
			}
		})
	}
}

func sortedPIDs(a, b int) []int {
	if a > b {
		a, b = b, a
	}
	return []int{a, b}
}

// TestScanSkipsSelf checks the scan over the real /proc completes and does
// not report the test process, which is in no pod.
func TestScanSkipsSelf(t *testing.T) {
	s, err := NewScanner(Config{})
	if err != nil {
		t.Fatal(err)
	}
	pods, err := s.Scan()
	if err != nil {
		t.Fatal(err)
	}
	self := os.Getpid()
	for uid, p := range pods {
		for _, pid := range p.PIDs {
			if pid == self {
				t.Errorf("pod %s includes the test process %s", uid, strconv.Itoa(pid))
			}
		}
	}
}
