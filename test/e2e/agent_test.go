package e2e

import (
	"bufio"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// agent is the portcullis-agent binary run by a test.
type agent struct {
	t       testing.TB
	e       *env
	bin     string
	config  string
	admin   string
	pinDir  string
	logPath string

	// Teardown sets teardownOnExit in the config written by the next start.
	Teardown bool
	// Extra is appended to the config written by the next start.
	Extra string
	// CPUs pins the agent (taskset -c CPUs). Empty: not pinned.
	CPUs string
	// LogLevel is log.level. Zero: debug.
	LogLevel string

	cmd  *exec.Cmd
	done chan struct{}
}

func newAgent(t testing.TB, e *env) *agent {
	a := &agent{
		t:        t,
		e:        e,
		bin:      e.bins.Agent,
		config:   filepath.Join(e.dir, "agent.yaml"),
		admin:    fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		pinDir:   pinDirFor(t),
		logPath:  filepath.Join(e.dir, "agent.log"),
		Teardown: true,
	}
	t.Cleanup(func() {
		if a.running() {
			a.signal(syscall.SIGTERM)
			if !a.wait(10 * time.Second) {
				a.t.Errorf("agent did not exit within 10s of SIGTERM; killing it")
				a.signal(syscall.SIGKILL)
				a.wait(5 * time.Second)
			}
		}
		if t.Failed() {
			if b, err := os.ReadFile(a.logPath); err == nil {
				t.Logf("agent log:\n%s", tail(string(b), 60))
			}
		}
		// Whatever a killed agent left pinned: removing the pins
		// detaches the links.
		if err := os.RemoveAll(a.pinDir); err != nil {
			t.Errorf("remove pin directory %s: %v", a.pinDir, err)
		}
	})
	return a
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// writeConfig writes agent.yaml.
func (a *agent) writeConfig() {
	cfg := fmt.Sprintf(`mode: local
nodeName: e2e-node
trustDomain: %s
adminAddress: %s
debugSocket: %s
pinDir: %s
teardownOnExit: %t
shutdownGrace: 5s
local:
  workloads: workloads.yaml
  policies: policies
audit:
  path: audit.log
log:
  format: json
  level: %s
%s`, trustDomain, a.admin, filepath.Join(a.e.dir, "debug.sock"), a.pinDir, a.Teardown, cmp.Or(a.LogLevel, "debug"), a.Extra)
	a.e.writeFile("agent.yaml", cfg)
}

// Start runs the agent and waits until /readyz says ready.
func (a *agent) Start() {
	a.t.Helper()
	if a.running() {
		a.t.Fatal("agent already running")
	}
	a.writeConfig()
	logf, err := os.OpenFile(a.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		a.t.Fatalf("agent log: %v", err)
	}
	a.cmd = pinned(a.CPUs, a.bin, "--config", a.config)
	a.cmd.Stdout, a.cmd.Stderr = logf, logf
	if err := a.cmd.Start(); err != nil {
		logf.Close()
		a.t.Fatalf("start agent: %v", err)
	}
	logf.Close()
	done := make(chan struct{})
	a.done = done
	cmd := a.cmd
	go func() {
		_ = cmd.Wait()
		close(done)
	}()
	a.waitReady()
}

// waitReady polls /readyz (there is no other signal) within waitTimeout.
func (a *agent) waitReady() {
	a.t.Helper()
	c := &http.Client{Timeout: time.Second}
	deadline := time.Now().Add(waitTimeout)
	last := "no answer"
	for time.Now().Before(deadline) {
		select {
		case <-a.done:
			b, _ := os.ReadFile(a.logPath)
			a.t.Fatalf("agent exited before it was ready (%v); log:\n%s", a.cmd.ProcessState, tail(string(b), 40))
		default:
		}
		resp, err := c.Get("http://" + a.admin + "/readyz")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
			last = strings.TrimSpace(string(b))
		} else {
			last = err.Error()
		}
		time.Sleep(25 * time.Millisecond)
	}
	a.t.Fatalf("agent not ready after %v: %s", waitTimeout, last)
}

func (a *agent) running() bool {
	if a.done == nil {
		return false
	}
	select {
	case <-a.done:
		return false
	default:
		return true
	}
}

func (a *agent) signal(sig syscall.Signal) {
	if a.cmd != nil && a.cmd.Process != nil {
		_ = a.cmd.Process.Signal(sig)
	}
}

// wait reports whether the agent exited within d.
func (a *agent) wait(d time.Duration) bool {
	select {
	case <-a.done:
		return true
	case <-time.After(d):
		return false
	}
}

// Stop sends SIGTERM and waits for the agent to drain and exit.
func (a *agent) Stop() {
	a.t.Helper()
	a.signal(syscall.SIGTERM)
	if !a.wait(15 * time.Second) {
		a.t.Fatal("agent did not exit within 15s of SIGTERM")
	}
	if st := a.cmd.ProcessState; !st.Success() {
		a.t.Errorf("agent exited with %v, want 0 after SIGTERM", st)
	}
}

// Kill sends SIGKILL and waits for the process to be gone.
func (a *agent) Kill() {
	a.t.Helper()
	a.signal(syscall.SIGKILL)
	if !a.wait(10 * time.Second) {
		a.t.Fatal("agent still alive 10s after SIGKILL")
	}
}

// waitLog waits (bounded) until the agent's log contains s.
func (a *agent) waitLog(s string) {
	a.t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		b, err := os.ReadFile(a.logPath)
		if err == nil && strings.Contains(string(b), s) {
			return
		}
		if time.Now().After(deadline) {
			a.t.Fatalf("agent log has no %q after %v", s, waitTimeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// PID is the running agent's process ID.
func (a *agent) PID() int { return a.cmd.Process.Pid }

// procStatusKB returns a "VmXxx:" field of /proc/<pid>/status in KiB.
func procStatusKB(t testing.TB, pid int, field string) int64 {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("read status of %d: %v", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && k == field {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				t.Fatalf("parse %s %q: %v", field, v, err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}

// auditRecord is the part of an audit record the tests compare.
type auditRecord struct {
	Decision string `json:"decision"`
	Reason   string `json:"reason,omitempty"`
	Policy   string `json:"policy,omitempty"`
	Mode     string `json:"mode"`
	Source   string `json:"source"`
	Workload string `json:"workload"`
	Port     int    `json:"port"`
	Protocol string `json:"protocol"`
	Method   string `json:"method,omitempty"`
	Path     string `json:"path,omitempty"`
	Status   int    `json:"status,omitempty"`
	ClientID string `json:"client_id,omitempty"`
}

// auditLog reads every record written so far.
func (a *agent) auditLog() []auditRecord {
	a.t.Helper()
	b, err := os.ReadFile(filepath.Join(a.e.dir, "audit.log"))
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		a.t.Fatalf("read audit log: %v", err)
	}
	var out []auditRecord
	for i, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if line == "" {
			continue
		}
		if strings.Contains(line, "eyJ") {
			a.t.Errorf("audit record %d carries something token-shaped: %s", i, line)
		}
		var r auditRecord
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			a.t.Fatalf("audit record %d %q: %v", i, line, err)
		}
		out = append(out, r)
	}
	return out
}

// metric returns the sum of the samples of a Prometheus metric whose
// labels contain every one of match ("name" or "name{...}" lines).
// metricReaches waits (at most 5s) until metric name (summed over the
// series matching match) equals want, for counters the agent bumps after an
// effect a test already saw; it returns the last value read.
func (a *agent) metricReaches(want float64, name string, match ...string) float64 {
	a.t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		got := a.metric(name, match...)
		if got == want || time.Now().After(deadline) {
			return got
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (a *agent) metric(name string, match ...string) float64 {
	a.t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + a.admin + "/metrics")
	if err != nil {
		a.t.Fatalf("scrape metrics: %v", err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var sum float64
	for _, line := range strings.Split(string(b), "\n") {
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue
		}
		ok := true
		for _, m := range match {
			ok = ok && strings.Contains(line, m)
		}
		if !ok {
			continue
		}
		f := strings.Fields(line)
		v, err := strconv.ParseFloat(f[len(f)-1], 64)
		if err == nil {
			sum += v
		}
	}
	return sum
}
