// Package procfs finds, from the node, where a Kubernetes pod lives: its
// cgroup and its network namespace. It scans /proc (the agent runs with
// hostPID) for processes whose cgroup names the pod UID, for both kubelet
// cgroup drivers (systemd and cgroupfs) and for cgroup v2 as well as v1-only
// hosts, and picks the pod sandbox (the pause process) as the owner of the
// network namespace.
//
// The package reads files only; it never enters a namespace.
package procfs

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// ErrNotFound is returned by Find when no process belongs to the pod: it has
// not started yet, or it is gone.
var ErrNotFound = errors.New("no process of the pod found")

// Config configures a Scanner.
type Config struct {
	// ProcRoot is the proc filesystem to scan. Empty means "/proc".
	ProcRoot string
	// CgroupRoot is where the cgroup v2 hierarchy is mounted. Empty means
	// the first cgroup2 mount in <ProcRoot>/self/mountinfo, or
	// /sys/fs/cgroup when there is none.
	CgroupRoot string
}

// Scanner finds pods' processes, cgroups and network namespaces in /proc. It
// holds no state between calls and is safe for concurrent use.
type Scanner struct {
	proc       string
	cgroupRoot string
}

// NewScanner returns a Scanner for cfg.
func NewScanner(cfg Config) (*Scanner, error) {
	s := &Scanner{proc: cfg.ProcRoot, cgroupRoot: cfg.CgroupRoot}
	if s.proc == "" {
		s.proc = "/proc"
	}
	if s.cgroupRoot == "" {
		root, err := cgroup2Mount(filepath.Join(s.proc, "self", "mountinfo"))
		if err != nil {
			return nil, err
		}
		s.cgroupRoot = root
	}
	return s, nil
}

// CgroupRoot returns the cgroup v2 mount point the Scanner resolves paths
// against.
func (s *Scanner) CgroupRoot() string { return s.cgroupRoot }

// Pod is where a pod lives on this node.
type Pod struct {
	// UID is the pod UID (canonical, with dashes).
	UID    string
	Driver Driver
	QoS    QoS
	// Cgroup is the pod-level cgroup v2 path relative to the hierarchy
	// root (e.g. /kubepods.slice/.../kubepods-burstable-pod<uid>.slice);
	// empty when the pod appears only in v1 hierarchies.
	Cgroup string
	// CgroupPath is the absolute directory of Cgroup under the Scanner's
	// CgroupRoot; empty when Cgroup is.
	CgroupPath string
	// CgroupV1 is the pod-level path in the v1 hierarchies, set when the
	// pod has no v2 cgroup (a v1-only host).
	CgroupV1 string
	// SandboxPID is the pod sandbox process: the one named "pause", or
	// else the oldest process of the pod, which created the pod's network
	// namespace (containers join it and may restart; the sandbox stays).
	SandboxPID int
	// SandboxStartTime is the sandbox's start time in clock ticks after
	// boot (/proc/<pid>/stat field 22): with SandboxPID it names the
	// process unambiguously, even if the PID is later reused.
	SandboxStartTime uint64
	// NetnsPath is <ProcRoot>/<SandboxPID>/ns/net. It is valid while the
	// sandbox lives: open it to hold the namespace.
	NetnsPath string
	// PIDs are all the pod's processes, ascending.
	PIDs []int
}

// Find returns the pod with uid, or an error wrapping ErrNotFound.
func (s *Scanner) Find(uid string) (*Pod, error) {
	want, ok := canonicalUID(uid)
	if !ok {
		return nil, fmt.Errorf("find pod %q: not a pod UID", uid)
	}
	pods, err := s.scan(want)
	if err != nil {
		return nil, err
	}
	p, ok := pods[want]
	if !ok {
		return nil, fmt.Errorf("find pod %s: %w", want, ErrNotFound)
	}
	return p, nil
}

// Scan returns every pod with at least one process on the node, by UID. One
// pass over /proc serves any number of pods, so a resync of a busy node
// costs the same as finding one pod.
func (s *Scanner) Scan() (map[string]*Pod, error) { return s.scan("") }

// candidate is a process seen in one pod.
type candidate struct {
	pid   int
	start uint64
	pause bool
}

func (s *Scanner) scan(only string) (map[string]*Pod, error) {
	entries, err := os.ReadDir(s.proc)
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", s.proc, err)
	}
	pods := map[string]*Pod{}
	procs := map[string][]candidate{}
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid <= 0 {
			continue
		}
		data, err := os.ReadFile(filepath.Join(s.proc, e.Name(), "cgroup"))
		if err != nil {
			continue // the process exited under us, or is not readable
		}
		if !bytes.Contains(data, []byte("pod")) {
			continue // the cheap filter: no pod cgroup in any hierarchy
		}
		v2, v1, ok := podOf(ParseCgroupFile(data))
		if !ok || (only != "" && v2.UID != only && v1.UID != only) {
			continue
		}
		uid := v2.UID
		if uid == "" {
			uid = v1.UID
		}
		p := pods[uid]
		if p == nil {
			p = &Pod{UID: uid}
			pods[uid] = p
		}
		if v2.UID != "" && p.Cgroup == "" {
			p.Driver, p.QoS, p.Cgroup = v2.Driver, v2.QoS, v2.PodPath
		} else if v2.UID == "" && p.CgroupV1 == "" {
			p.CgroupV1 = v1.PodPath
			if p.Driver == DriverUnknown {
				p.Driver, p.QoS = v1.Driver, v1.QoS
			}
		}
		start, err := readStartTime(filepath.Join(s.proc, e.Name(), "stat"))
		if err != nil {
			continue // exited between reads
		}
		comm, _ := os.ReadFile(filepath.Join(s.proc, e.Name(), "comm"))
		procs[uid] = append(procs[uid], candidate{
			pid:   pid,
			start: start,
			pause: string(bytes.TrimSpace(comm)) == "pause",
		})
	}
	for uid, p := range pods {
		cands := procs[uid]
		if len(cands) == 0 {
			delete(pods, uid)
			continue
		}
		sb := sandbox(cands)
		p.SandboxPID, p.SandboxStartTime = sb.pid, sb.start
		p.NetnsPath = filepath.Join(s.proc, strconv.Itoa(sb.pid), "ns", "net")
		for _, c := range cands {
			p.PIDs = append(p.PIDs, c.pid)
		}
		slices.Sort(p.PIDs)
		if p.Cgroup != "" {
			p.Cgroup, p.CgroupPath = s.resolve(p.Cgroup)
		}
		if p.Cgroup != "" {
			p.CgroupV1 = ""
		}
	}
	return pods, nil
}

// podOf returns the pod cgroup of a process in the v2 hierarchy and in the
// v1 hierarchies (systemd's named one first, as it is the one the systemd
// driver uses).
func podOf(lines []CgroupLine) (v2, v1 PodCgroup, ok bool) {
	for _, l := range lines {
		pc, found := ParsePodCgroup(l.Path)
		if !found {
			continue
		}
		if l.Hierarchy == 0 && len(l.Controllers) == 0 {
			v2 = pc
		} else if v1.UID == "" || slices.Contains(l.Controllers, "name=systemd") {
			v1 = pc
		}
	}
	return v2, v1, v2.UID != "" || v1.UID != ""
}

// sandbox picks the pod sandbox among its processes: a "pause" process if
// there is one, the oldest otherwise (ties broken by the lower PID).
func sandbox(cands []candidate) candidate {
	best := cands[0]
	for _, c := range cands[1:] {
		switch {
		case c.pause != best.pause:
			if c.pause {
				best = c
			}
		case c.start < best.start || c.start == best.start && c.pid < best.pid:
			best = c
		}
	}
	return best
}

// resolve maps a pod cgroup path as read from /proc/<pid>/cgroup to a path
// relative to the v2 root and its absolute directory. A path read from
// another cgroup namespace starts with "/.." segments; those are dropped
// and, when the remainder does not exist under the root, the pod directory
// is looked for by name in the kubepods tree.
func (s *Scanner) resolve(rel string) (string, string) {
	clean := rel
	for strings.HasPrefix(clean, "/..") {
		clean = strings.TrimPrefix(clean, "/..")
	}
	if clean == "" || clean[0] != '/' {
		clean = "/" + clean
	}
	abs := filepath.Join(s.cgroupRoot, clean)
	if clean == rel {
		return clean, abs // as the kernel reported it, from our namespace
	}
	if fi, err := os.Stat(abs); err == nil && fi.IsDir() {
		return clean, abs
	}
	if found := findDir(s.cgroupRoot, filepath.Base(clean), 6); found != "" {
		r, _ := filepath.Rel(s.cgroupRoot, found)
		return "/" + r, found
	}
	return clean, abs
}

// findDir walks root breadth-first, up to maxDepth levels, for a directory
// named name inside a kubepods tree.
func findDir(root, name string, maxDepth int) string {
	level := []string{root}
	for d := 0; d < maxDepth && len(level) > 0; d++ {
		var next []string
		for _, dir := range level {
			entries, err := os.ReadDir(dir)
			if err != nil {
				continue
			}
			for _, e := range entries {
				if !e.IsDir() {
					continue
				}
				p := filepath.Join(dir, e.Name())
				if e.Name() == name {
					return p
				}
				next = append(next, p)
			}
		}
		level = next
	}
	return ""
}

// readStartTime reads field 22 (starttime) of /proc/<pid>/stat. The command
// name (field 2) may contain spaces and parentheses, so fields are counted
// after its last ')'.
func readStartTime(path string) (uint64, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return parseStartTime(data)
}

func parseStartTime(data []byte) (uint64, error) {
	i := bytes.LastIndexByte(data, ')')
	if i < 0 {
		return 0, errors.New("parse stat: no command name")
	}
	// After ") " come fields 3 (state) onwards; starttime is field 22.
	fields := strings.Fields(string(data[i+1:]))
	const idx = 22 - 3
	if len(fields) <= idx {
		return 0, fmt.Errorf("parse stat: %d fields after the command name, want > %d", len(fields), idx)
	}
	v, err := strconv.ParseUint(fields[idx], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse stat starttime: %w", err)
	}
	return v, nil
}

// cgroup2Mount returns the mount point of the first cgroup2 file system in
// a mountinfo file, or /sys/fs/cgroup when none is listed.
func cgroup2Mount(mountinfo string) (string, error) {
	data, err := os.ReadFile(mountinfo)
	if errors.Is(err, fs.ErrNotExist) {
		return "/sys/fs/cgroup", nil
	}
	if err != nil {
		return "", fmt.Errorf("read mountinfo: %w", err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		// id parent major:minor root mountpoint options [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(line, " - ")
		if !ok {
			continue
		}
		pf, qf := strings.Fields(pre), strings.Fields(post)
		if len(pf) >= 5 && len(qf) >= 1 && qf[0] == "cgroup2" {
			return unescapeMount(pf[4]), nil
		}
	}
	return "/sys/fs/cgroup", nil
}

// unescapeMount undoes mountinfo's octal escapes (\040 for a space, ...).
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+4 <= len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// Alive reports whether the process pid still runs and is the one that
// started at startTime (not a later process that reused the PID).
func (s *Scanner) Alive(pid int, startTime uint64) bool {
	st, err := readStartTime(filepath.Join(s.proc, strconv.Itoa(pid), "stat"))
	return err == nil && st == startTime
}
