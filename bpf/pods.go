package bpf

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/portcullis-mesh/portcullis/bpf/podnet"
)

// MaxPorts is the longest port list a PortSpec may hold (pc_ports is sized
// for it, see lib/capture.h).
const MaxPorts = 64

// maxKeyLen is the longest Pod.Key (struct pc_pod.key minus its NUL).
const maxKeyLen = len(portcullisPcPod{}.Key) - 1

// ErrNotEnrolled is returned for operations on a pod that is not enrolled.
var ErrNotEnrolled = errors.New("pod not enrolled")

// ErrUnsupportedInterface is returned by Enroll when the pod has a network
// interface capture cannot parse (not Ethernet: a tunnel, wireguard, tun).
// Traffic arriving there would bypass capture, so a pod with such an
// interface is only enrolled when Pod.Interfaces names the interfaces to
// capture explicitly.
var ErrUnsupportedInterface = errors.New("interface without an Ethernet header")

// CaptureMode says how PortSpec.Ports is read.
type CaptureMode uint32

const (
	// CaptureListed captures exactly PortSpec.Ports. It is the zero value:
	// a PortSpec{} captures nothing.
	CaptureListed CaptureMode = CaptureMode(portcullisPcCaptureModePC_MODE_LISTED)
	// CaptureAllExcept captures every TCP port except PortSpec.Ports.
	CaptureAllExcept CaptureMode = CaptureMode(portcullisPcCaptureModePC_MODE_ALL_EXCEPT)
)

func (m CaptureMode) String() string {
	switch m {
	case CaptureListed:
		return "listed"
	case CaptureAllExcept:
		return "all-except"
	}
	return "mode(" + strconv.Itoa(int(m)) + ")"
}

// PortSpec says which TCP ports of a pod are captured. The agent's listener
// port is never captured, whatever the spec says.
type PortSpec struct {
	// Mode is how Ports is read; the zero value is CaptureListed.
	Mode CaptureMode
	// Ports are the captured ports (CaptureListed) or the exclusions
	// (CaptureAllExcept). At most MaxPorts; 0 is invalid; duplicates are
	// ignored.
	Ports []uint16
}

func (s PortSpec) validate() error {
	if s.Mode != CaptureListed && s.Mode != CaptureAllExcept {
		return fmt.Errorf("invalid capture mode %d", s.Mode)
	}
	if len(s.Ports) > MaxPorts {
		return fmt.Errorf("%d ports, at most %d", len(s.Ports), MaxPorts)
	}
	if slices.Contains(s.Ports, 0) {
		return errors.New("port 0")
	}
	return nil
}

// Covers reports whether s captures port. (The datapath still never
// captures its listener port, whatever s says.)
func (s PortSpec) Covers(port uint16) bool {
	return slices.Contains(s.Ports, port) != (s.Mode == CaptureAllExcept)
}

func (s PortSpec) normalized() PortSpec {
	ports := slices.Clone(s.Ports)
	slices.Sort(ports)
	return PortSpec{Mode: s.Mode, Ports: slices.Compact(ports)}
}

// Pod is a pod to capture.
type Pod struct {
	// Key names the pod uniquely on the node, e.g. "namespace/name". At
	// most 319 bytes.
	Key string
	// NetnsPath is the pod's network namespace (/proc/<pid>/ns/net,
	// /run/netns/<name>, ...).
	NetnsPath string
	// Interfaces are the interface names inside the pod's netns whose
	// ingress is captured. Empty means every non-loopback interface present
	// at enrolment, all of which must be Ethernet (ErrUnsupportedInterface).
	Interfaces []string
	// Ports says which ports are captured.
	Ports PortSpec
}

// PodInfo is an enrolled pod as the datapath sees it.
type PodInfo struct {
	Key string
	// NetnsCookie is the kernel's cookie of the pod's netns
	// (SO_NETNS_COOKIE), the key of the pod's map entries.
	NetnsCookie uint64
	Ports       PortSpec
	// Ifindexes are the interfaces (inside the pod's netns) with a capture
	// link, sorted.
	Ifindexes []int
}

type podState struct {
	key    string
	cookie uint64
	prog   *ebpf.Program     // this pod's capture program instance
	links  map[int]link.Link // by ifindex in the pod's netns
}

// NetnsCookie returns the cookie of the network namespace at path.
func NetnsCookie(netnsPath string) (uint64, error) {
	var cookie uint64
	err := podnet.Do(netnsPath, func() error {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("socket: %w", err)
		}
		defer unix.Close(fd)
		cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
		if err != nil {
			return fmt.Errorf("getsockopt SO_NETNS_COOKIE: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("netns cookie of %s: %w", netnsPath, err)
	}
	return cookie, nil
}

// Enroll starts capturing p: it writes p's port list, then attaches the
// capture program to p's interfaces. Enroll is idempotent: enrolling a pod
// that is already enrolled (also by a previous agent, re-adopted by Open)
// updates its ports and attaches only interfaces not attached yet. A pod
// whose key is enrolled with another netns is replaced. On error the pod
// may be partly enrolled; Remove cleans it up.
func (d *Datapath) Enroll(p Pod) error {
	if err := d.enroll(p); err != nil {
		return fmt.Errorf("enroll pod %s: %w", p.Key, err)
	}
	return nil
}

func (d *Datapath) enroll(p Pod) error {
	if p.Key == "" || len(p.Key) > maxKeyLen {
		return fmt.Errorf("key must have 1 to %d bytes", maxKeyLen)
	}
	if err := p.Ports.validate(); err != nil {
		return err
	}
	cookie, err := NetnsCookie(p.NetnsPath)
	if err != nil {
		return err
	}
	ifaces, err := podInterfaces(p.NetnsPath, p.Interfaces)
	if err != nil {
		return err
	}

	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return errors.New("datapath closed")
	}
	st := d.pods[p.Key]
	if st != nil && st.cookie != cookie {
		if err := d.removeLocked(st); err != nil {
			return fmt.Errorf("replace previous netns: %w", err)
		}
		st = nil
	}
	if st == nil {
		st = &podState{key: p.Key, cookie: cookie, links: make(map[int]link.Link)}
		d.pods[p.Key] = st
	}
	if err := d.writePorts(st, p.Ports); err != nil {
		return err
	}
	if st.prog == nil {
		if st.prog, err = d.loadCapture(cookie); err != nil {
			return err
		}
	}
	dir := d.pin(pinPodsDir, strconv.FormatUint(cookie, 10))
	if err := os.MkdirAll(dir, pinPodDirMode); err != nil {
		return fmt.Errorf("create pin directory: %w", err)
	}
	for _, ifindex := range ifaces {
		if _, ok := st.links[ifindex]; ok {
			continue
		}
		l, err := attachTCX(p.NetnsPath, ifindex, st.prog)
		if err != nil {
			return err
		}
		if err := l.Pin(fmt.Sprintf("%s/%s%d", dir, pinLinkPrefix, ifindex)); err != nil {
			l.Close()
			return fmt.Errorf("pin link of ifindex %d: %w", ifindex, err)
		}
		st.links[ifindex] = l
	}
	return nil
}

// attachTCX attaches prog at TCX ingress of ifindex inside the netns: the
// kernel resolves the ifindex in the caller's netns. The program goes to
// the head of the chain so that no other program can pass a packet to the
// stack before capture decided.
func attachTCX(netnsPath string, ifindex int, prog *ebpf.Program) (link.Link, error) {
	var l link.Link
	err := podnet.Do(netnsPath, func() error {
		var err error
		l, err = link.AttachTCX(link.TCXOptions{
			Interface: ifindex,
			Program:   prog,
			Attach:    ebpf.AttachTCXIngress,
			Anchor:    link.Head(),
		})
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("attach tcx to ifindex %d in netns %s: %w", ifindex, netnsPath, err)
	}
	return l, nil
}

// podInterfaces resolves names (or, when empty, every non-loopback Ethernet
// interface) to ifindexes inside the netns. Capture parses Ethernet frames
// only, so other link types are refused.
func podInterfaces(netnsPath string, names []string) ([]int, error) {
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return nil, fmt.Errorf("open netns %s: %w", netnsPath, err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink in netns %s: %w", netnsPath, err)
	}
	defer h.Close()
	var links []netlink.Link
	if len(names) == 0 {
		all, err := h.LinkList()
		if err != nil {
			return nil, fmt.Errorf("list interfaces in netns %s: %w", netnsPath, err)
		}
		for _, l := range all {
			a := l.Attrs()
			if a.Flags&net.FlagLoopback != 0 || a.EncapType == "loopback" {
				continue
			}
			if a.EncapType != "ether" {
				return nil, fmt.Errorf("interface %s (%s) in netns %s: %w", a.Name, a.EncapType, netnsPath, ErrUnsupportedInterface)
			}
			links = append(links, l)
		}
	} else {
		for _, name := range names {
			l, err := h.LinkByName(name)
			if err != nil {
				return nil, fmt.Errorf("find interface %s in netns %s: %w", name, netnsPath, err)
			}
			if l.Attrs().EncapType != "ether" {
				return nil, fmt.Errorf("interface %s (%s) in netns %s: %w", name, l.Attrs().EncapType, netnsPath, ErrUnsupportedInterface)
			}
			links = append(links, l)
		}
	}
	ifindexes := make([]int, 0, len(links))
	for _, l := range links {
		ifindexes = append(ifindexes, l.Attrs().Index)
	}
	slices.Sort(ifindexes)
	return ifindexes, nil
}

// writePorts installs spec for st atomically: new entries under the next
// generation, then the pod entry (one map update switches the program to
// them), then the old generation's entries are deleted.
func (d *Datapath) writePorts(st *podState, spec PortSpec) error {
	spec = spec.normalized()
	var pod portcullisPcPod
	var gen uint32
	if err := d.objs.PcPods.Lookup(st.cookie, &pod); err == nil {
		gen = pod.Generation + 1
	} else if !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("look up pod entry: %w", err)
	}
	for _, port := range spec.Ports {
		k := portcullisPcPortKey{NetnsCookie: st.cookie, Port: port, Generation: gen}
		if err := d.objs.PcPorts.Put(k, uint8(1)); err != nil {
			return fmt.Errorf("write port %d: %w", port, err)
		}
	}
	pod = portcullisPcPod{
		Mode:       portcullisPcCaptureMode(spec.Mode),
		Generation: gen,
		Nports:     uint32(len(spec.Ports)),
	}
	for i := range len(st.key) {
		pod.Key[i] = int8(st.key[i])
	}
	if err := d.objs.PcPods.Put(st.cookie, pod); err != nil {
		return fmt.Errorf("write pod entry: %w", err)
	}
	return d.deletePorts(st.cookie, func(g uint32) bool { return g != gen })
}

// deletePorts deletes the port entries of the netns cookie whose generation
// matches.
func (d *Datapath) deletePorts(cookie uint64, match func(generation uint32) bool) error {
	var (
		k     portcullisPcPortKey
		v     uint8
		stale []portcullisPcPortKey
	)
	iter := d.objs.PcPorts.Iterate()
	for iter.Next(&k, &v) {
		if k.NetnsCookie == cookie && match(k.Generation) {
			stale = append(stale, k)
		}
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("iterate ports: %w", err)
	}
	for _, k := range stale {
		if err := d.objs.PcPorts.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete port %d: %w", k.Port, err)
		}
	}
	return nil
}

// UpdatePorts replaces the port list of an enrolled pod, atomically for
// the capture program.
func (d *Datapath) UpdatePorts(key string, spec PortSpec) error {
	if err := spec.validate(); err != nil {
		return fmt.Errorf("update ports of pod %s: %w", key, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	st, ok := d.pods[key]
	if !ok {
		return fmt.Errorf("update ports of pod %s: %w", key, ErrNotEnrolled)
	}
	if err := d.writePorts(st, spec); err != nil {
		return fmt.Errorf("update ports of pod %s: %w", key, err)
	}
	return nil
}

// Remove stops capturing the pod: it detaches its links, then deletes its
// map entries and pins. Removing a pod that is not enrolled does nothing.
func (d *Datapath) Remove(key string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	st, ok := d.pods[key]
	if !ok {
		return nil
	}
	if err := d.removeLocked(st); err != nil {
		return fmt.Errorf("remove pod %s: %w", key, err)
	}
	return nil
}

func (d *Datapath) removeLocked(st *podState) error {
	if err := d.detachPod(st); err != nil {
		return err
	}
	if err := d.deletePorts(st.cookie, func(uint32) bool { return true }); err != nil {
		return err
	}
	if err := d.objs.PcPods.Delete(st.cookie); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete pod entry: %w", err)
	}
	if st.prog != nil {
		st.prog.Close()
		st.prog = nil
	}
	delete(d.pods, st.key)
	return nil
}

// detachPod unpins and closes the pod's links, which detaches them, and
// removes its pin directory.
func (d *Datapath) detachPod(st *podState) error {
	for ifindex, l := range st.links {
		if err := unpinClose(l); err != nil {
			return fmt.Errorf("detach ifindex %d: %w", ifindex, err)
		}
		delete(st.links, ifindex)
	}
	dir := d.pin(pinPodsDir, strconv.FormatUint(st.cookie, 10))
	if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove pin directory: %w", err)
	}
	return nil
}

// Capturing reports whether capture is attached for the pod with key:
// enrolled by this datapath, or by a previous agent and re-adopted by Open.
func (d *Datapath) Capturing(key string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.pods[key]
	return st != nil && len(st.links) > 0
}

// Pods lists the enrolled pods, sorted by key.
func (d *Datapath) Pods() ([]PodInfo, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ports := make(map[uint64][]uint16)
	var (
		k portcullisPcPortKey
		v uint8
	)
	gens := make(map[uint64]uint32)
	modes := make(map[uint64]CaptureMode)
	for _, st := range d.pods {
		var pod portcullisPcPod
		if err := d.objs.PcPods.Lookup(st.cookie, &pod); err != nil {
			return nil, fmt.Errorf("look up pod %s: %w", st.key, err)
		}
		gens[st.cookie] = pod.Generation
		modes[st.cookie] = CaptureMode(pod.Mode)
	}
	iter := d.objs.PcPorts.Iterate()
	for iter.Next(&k, &v) {
		if g, ok := gens[k.NetnsCookie]; ok && g == k.Generation {
			ports[k.NetnsCookie] = append(ports[k.NetnsCookie], k.Port)
		}
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("iterate ports: %w", err)
	}
	out := make([]PodInfo, 0, len(d.pods))
	for _, st := range d.pods {
		info := PodInfo{
			Key:         st.key,
			NetnsCookie: st.cookie,
			Ports:       PortSpec{Mode: modes[st.cookie], Ports: ports[st.cookie]}.normalized(),
		}
		for ifindex := range st.links {
			info.Ifindexes = append(info.Ifindexes, ifindex)
		}
		slices.Sort(info.Ifindexes)
		out = append(out, info)
	}
	slices.SortFunc(out, func(a, b PodInfo) int {
		if a.Key < b.Key {
			return -1
		}
		if a.Key > b.Key {
			return 1
		}
		return 0
	})
	return out, nil
}

// MapEntries counts the entries of each map (for the debug CLI and leak
// checks), keyed by map name (pc_pods, ...). The per-CPU counters array is
// left out: its size is fixed.
func (d *Datapath) MapEntries() (map[string]int, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]int)
	for name, m := range map[string]*ebpf.Map{
		portcullisMapPcPods:    d.objs.PcPods,
		portcullisMapPcPorts:   d.objs.PcPorts,
		portcullisMapPcCgroups: d.objs.PcCgroups,
		portcullisMapPcConns:   d.objs.PcConns,
	} {
		n := 0
		var k, v []byte
		iter := m.Iterate()
		for iter.Next(&k, &v) {
			n++
		}
		if err := iter.Err(); err != nil {
			return nil, fmt.Errorf("iterate %s: %w", name, err)
		}
		out[name] = n
	}
	return out, nil
}

// CaptureProgramIDs returns the kernel IDs of the pods' capture programs
// (one instance per pod), by pod key, so that callers can find their links
// (bpftool, leak checks).
func (d *Datapath) CaptureProgramIDs() (map[string]ebpf.ProgramID, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string]ebpf.ProgramID, len(d.pods))
	for key, st := range d.pods {
		if st.prog == nil {
			continue
		}
		info, err := st.prog.Info()
		if err != nil {
			return nil, fmt.Errorf("capture program info of %s: %w", key, err)
		}
		id, ok := info.ID()
		if !ok {
			return nil, fmt.Errorf("capture program info of %s: no id", key)
		}
		out[key] = id
	}
	return out, nil
}
