package procfs

import (
	"bufio"
	"bytes"
	"strconv"
	"strings"
)

// Driver is the kubelet cgroup driver that named a pod's cgroup.
type Driver uint8

const (
	// DriverUnknown: no pod cgroup was recognised.
	DriverUnknown Driver = iota
	// DriverSystemd: slices such as
	// kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice.
	DriverSystemd
	// DriverCgroupfs: plain directories such as kubepods/burstable/pod<uid>.
	DriverCgroupfs
)

func (d Driver) String() string {
	switch d {
	case DriverSystemd:
		return "systemd"
	case DriverCgroupfs:
		return "cgroupfs"
	default:
		return "unknown"
	}
}

// QoS is a pod's Kubernetes QoS class as encoded in its cgroup path.
type QoS string

// The QoS classes. Guaranteed pods sit directly under kubepods.
const (
	QoSGuaranteed QoS = "guaranteed"
	QoSBurstable  QoS = "burstable"
	QoSBestEffort QoS = "besteffort"
)

// CgroupLine is one line of /proc/<pid>/cgroup:
// hierarchy-ID:controller-list:cgroup-path.
type CgroupLine struct {
	// Hierarchy is 0 for the cgroup v2 (unified) hierarchy.
	Hierarchy int
	// Controllers are the v1 controllers of the hierarchy ("name=systemd"
	// for systemd's named hierarchy); empty for v2.
	Controllers []string
	// Path is relative to the hierarchy root as seen from the reader's
	// cgroup namespace; it starts with "/.." segments when the process is
	// outside the reader's namespace root.
	Path string
}

// ParseCgroupFile parses the content of /proc/<pid>/cgroup, skipping
// malformed lines.
func ParseCgroupFile(data []byte) []CgroupLine {
	var out []CgroupLine
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		id, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		ctrl, path, ok := strings.Cut(rest, ":")
		if !ok || !strings.HasPrefix(path, "/") {
			continue
		}
		h, err := strconv.Atoi(id)
		if err != nil || h < 0 {
			continue
		}
		l := CgroupLine{Hierarchy: h, Path: path}
		if ctrl != "" {
			l.Controllers = strings.Split(ctrl, ",")
		}
		out = append(out, l)
	}
	return out
}

// PodCgroup is what a cgroup path says about the pod it belongs to.
type PodCgroup struct {
	// UID is the pod UID in its canonical form (with dashes).
	UID    string
	Driver Driver
	QoS    QoS
	// PodPath is the path of the pod-level cgroup: the input path cut
	// after the pod segment, so the container's own cgroup is dropped.
	PodPath string
	// Container is the segment below the pod cgroup (e.g.
	// cri-containerd-<id>.scope or <id>); empty for the pod cgroup itself.
	Container string
}

// ParsePodCgroup recognises a kubelet pod cgroup in path, for both the
// systemd and cgroupfs drivers, wherever the kubepods tree is rooted (under
// the hierarchy root, a --cgroup-root, or after "/.." segments of a foreign
// cgroup namespace).
func ParsePodCgroup(path string) (PodCgroup, bool) {
	segs := strings.Split(path, "/")
	for i, s := range segs {
		pc, ok := parsePodSegment(s, segs[:i])
		if !ok {
			continue
		}
		pc.PodPath = strings.Join(segs[:i+1], "/")
		if i+1 < len(segs) {
			pc.Container = segs[i+1]
		}
		return pc, true
	}
	return PodCgroup{}, false
}

// parsePodSegment recognises one pod segment; parents are the segments
// before it, which must carry the kubepods ancestry for a cgroupfs match.
func parsePodSegment(s string, parents []string) (PodCgroup, bool) {
	// systemd: kubepods-pod<uid>.slice, kubepods-<qos>-pod<uid>.slice
	if name, ok := strings.CutSuffix(s, ".slice"); ok && strings.HasPrefix(name, "kubepods-") {
		rest := strings.TrimPrefix(name, "kubepods-")
		qos := QoSGuaranteed
		for _, q := range []QoS{QoSBurstable, QoSBestEffort} {
			if r, ok := strings.CutPrefix(rest, string(q)+"-"); ok {
				qos, rest = q, r
				break
			}
		}
		raw, ok := strings.CutPrefix(rest, "pod")
		if !ok {
			return PodCgroup{}, false
		}
		uid, ok := canonicalUID(strings.ReplaceAll(raw, "_", "-"))
		if !ok {
			return PodCgroup{}, false
		}
		return PodCgroup{UID: uid, Driver: DriverSystemd, QoS: qos}, true
	}
	// cgroupfs: .../kubepods/pod<uid> or .../kubepods/<qos>/pod<uid>
	raw, ok := strings.CutPrefix(s, "pod")
	if !ok || len(parents) == 0 {
		return PodCgroup{}, false
	}
	uid, ok := canonicalUID(raw)
	if !ok {
		return PodCgroup{}, false
	}
	parent := parents[len(parents)-1]
	switch {
	case parent == "kubepods":
		return PodCgroup{UID: uid, Driver: DriverCgroupfs, QoS: QoSGuaranteed}, true
	case (parent == string(QoSBurstable) || parent == string(QoSBestEffort)) &&
		len(parents) >= 2 && parents[len(parents)-2] == "kubepods":
		return PodCgroup{UID: uid, Driver: DriverCgroupfs, QoS: QoS(parent)}, true
	}
	return PodCgroup{}, false
}

// canonicalUID accepts a UUID in 8-4-4-4-12 hex form and returns it in
// lower case.
func canonicalUID(s string) (string, bool) {
	if len(s) != 36 {
		return "", false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch i {
		case 8, 13, 18, 23:
			if c != '-' {
				return "", false
			}
		default:
			if !isHex(c) {
				return "", false
			}
		}
	}
	return strings.ToLower(s), true
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

// SystemdSliceName returns the systemd driver's pod slice name for uid and
// qos, e.g. kubepods-burstable-pod1234_5678.slice.
func SystemdSliceName(uid string, qos QoS) string {
	u := strings.ReplaceAll(uid, "-", "_")
	if qos == QoSGuaranteed || qos == "" {
		return "kubepods-pod" + u + ".slice"
	}
	return "kubepods-" + string(qos) + "-pod" + u + ".slice"
}
