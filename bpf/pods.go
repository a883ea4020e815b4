package bpf

import (
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
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

// ErrUnsupportedInterface is returned by Enroll for an interface named in
// Pod.Interfaces that capture cannot serve: the loopback interface, which
// is never captured (the agent reaches the application over it). Other
// link types are never refused (see captureKindOf).
var ErrUnsupportedInterface = errors.New("interface of an unsupported link type")

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
	// ingress is captured. Empty means every non-loopback interface,
	// whatever its link type (Ethernet, tun, wireguard, IP tunnels, and
	// types capture does not know, read from their network header) and
	// whatever its state. Naming the loopback interface fails Enroll with
	// ErrUnsupportedInterface.
	//
	// Interfaces that appear after Enroll (a CNI plugin creating eth0 late,
	// Multus, hot-plug) are captured too: the datapath watches the pod's
	// netns for new links until Remove or Close, so Enroll accepts a pod
	// with no interface yet besides lo and capture starts as interfaces
	// appear. With names, only interfaces of those names are captured,
	// also when they are created later. Errors of the watcher go to
	// Config.OnError and PodInfo.WatchErr.
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
	// WatchErr is the last error of the pod's interface watcher (also
	// reported through Config.OnError), nil when none since the pod's last
	// Enroll. A pod re-adopted by Open and not enrolled again since has no
	// watcher.
	WatchErr error
}

// captureKind is how the capture program reads an interface's packets.
// Each kind is a separate program instance (the load-time constant
// pc_l3_dev), and its links are pinned with their own prefix so that Open
// re-points each pinned link to the instance of its kind.
type captureKind int

const (
	// captureEthernet: packets start with an Ethernet header.
	captureEthernet captureKind = iota
	// captureL3: devices without an Ethernet header (tun, wireguard, IP
	// tunnels); headers are read from the network header.
	captureL3
	numCaptureKinds
)

func (k captureKind) String() string {
	if k == captureL3 {
		return "l3"
	}
	return "ethernet"
}

// pinPrefix is the name prefix of pinned links of this kind: tcx_<ifindex>
// (as before L3 support, so older pins re-adopt as Ethernet) or
// tcxl3_<ifindex>.
func (k captureKind) pinPrefix() string {
	if k == captureL3 {
		return pinLinkL3Prefix
	}
	return pinLinkPrefix
}

// captureKindOf says which capture instance reads the packets of a
// (non-loopback) link: the Ethernet instance for Ethernet devices, the L3
// instance for every other link type, known or not. The L3 instance reads
// from the network header, which __netif_receive_skb_core resets to
// skb->data before TCX runs on any device (net/core/dev.c), so it is where
// ip_rcv will parse the packet whatever the device's link layer: tun and
// wireguard (ARPHRD_NONE), IP tunnels (ipip, sit, gre, ip6tnl, ip6gre),
// raw IP modems, ppp, IPoIB, and types capture never heard of. Nothing is
// refused for its link type: a refused interface would pass its traffic
// uncaptured.
func captureKindOf(a *netlink.LinkAttrs) captureKind {
	if a.EncapType == "ether" {
		return captureEthernet
	}
	return captureL3
}

func isLoopback(a *netlink.LinkAttrs) bool {
	return a.Flags&net.FlagLoopback != 0 || a.EncapType == "loopback"
}

// podLink is a capture link on one interface of a pod.
type podLink struct {
	link link.Link
	kind captureKind
}

type podState struct {
	key    string
	cookie uint64
	// progs are this pod's capture program instances by kind, loaded when
	// the pod first has an interface of that kind.
	progs [numCaptureKinds]*ebpf.Program
	links map[int]podLink // by ifindex in the pod's netns
	// names are Pod.Interfaces of the last Enroll (nil: every interface).
	names []string
	// watch is the interface watcher, nil for a pod re-adopted and not
	// enrolled since.
	watch *podWatch
	// watchErr is the watcher's last error (PodInfo.WatchErr).
	watchErr error
}

// wants reports whether the pod captures the interface named name.
func (st *podState) wants(name string) bool {
	return len(st.names) == 0 || slices.Contains(st.names, name)
}

// NetnsCookie returns the cookie of the network namespace at path.
func NetnsCookie(netnsPath string) (uint64, error) {
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		return 0, fmt.Errorf("netns cookie of %s: %w", netnsPath, err)
	}
	defer ns.Close()
	cookie, err := netnsCookie(ns)
	if err != nil {
		return 0, fmt.Errorf("netns cookie of %s: %w", netnsPath, err)
	}
	return cookie, nil
}

func netnsCookie(ns netns.NsHandle) (uint64, error) {
	var cookie uint64
	err := podnet.DoIn(ns, func() error {
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
	return cookie, err
}

// Enroll starts capturing p: it writes p's port list, then attaches the
// capture program to p's interfaces, then starts watching p's netns for
// interfaces that appear later (see Pod.Interfaces) until Remove or Close.
// The watcher holds the netns open, as the agent's in-pod listeners do.
// Enroll is idempotent: enrolling a pod that is already enrolled (also by
// a previous agent, re-adopted by Open, which then gets its watcher)
// updates its ports and attaches only interfaces not attached yet. A pod
// whose key is enrolled with another netns is replaced. On error the pod
// may be partly enrolled, without a watcher; Remove cleans it up.
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
	ns, err := netns.GetFromPath(p.NetnsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", p.NetnsPath, err)
	}
	// ns goes to the watcher when one is started.
	defer func() {
		if ns.IsOpen() {
			ns.Close()
		}
	}()
	cookie, err := netnsCookie(ns)
	if err != nil {
		return fmt.Errorf("netns cookie of %s: %w", p.NetnsPath, err)
	}
	ifaces, err := podInterfaces(ns, p.Interfaces)
	if err != nil {
		return fmt.Errorf("netns %s: %w", p.NetnsPath, err)
	}

	defer d.unlockAndWait()
	d.mu.Lock()
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
		st = &podState{key: p.Key, cookie: cookie, links: make(map[int]podLink)}
		d.pods[p.Key] = st
	}
	st.names = slices.Clone(p.Interfaces)
	st.watchErr = nil
	if err := d.writePorts(st, p.Ports); err != nil {
		return err
	}
	if err := os.MkdirAll(d.podPinDir(cookie), pinPodDirMode); err != nil {
		return fmt.Errorf("create pin directory: %w", err)
	}
	// An interface that cannot be attached must not leave the others
	// open, nor the pod without its watcher: attach what can be, watch,
	// then report the error (the caller retries; attach is idempotent).
	var errs []error
	for _, iface := range ifaces {
		if err := d.attachLocked(st, ns, iface); err != nil {
			errs = append(errs, err)
		}
	}
	if st.watch == nil {
		st.watch = d.startWatch(st, ns)
		ns = netns.None() // the watcher's now
	}
	return errors.Join(errs...)
}

// podIface is an interface to capture.
type podIface struct {
	index int
	name  string
	kind  captureKind
}

// attachLocked attaches the capture program of the interface's kind at its
// TCX ingress, unless a link is there already, and pins the link.
func (d *Datapath) attachLocked(st *podState, ns netns.NsHandle, iface podIface) error {
	if pl, ok := st.links[iface.index]; ok {
		// The link may be defunct: its interface went away while the
		// watcher was not listening (a lost subscription), and a new one
		// reuses the ifindex. Such a link is replaced.
		if pl.kind == iface.kind && linkAttached(ns, iface.index, pl.link) {
			return nil
		}
		// Its link type changed (tun's TUNSETLINK, only while down), or
		// it is defunct.
		if err := d.detachLocked(st, iface.index); err != nil {
			return err
		}
	}
	prog, err := d.captureProgLocked(st, iface.kind)
	if err != nil {
		return err
	}
	l, err := attachTCX(ns, iface.index, prog)
	if err != nil {
		return fmt.Errorf("interface %s: %w", iface.name, err)
	}
	if err := l.Pin(d.podLinkPin(st.cookie, iface.kind, iface.index)); err != nil {
		l.Close()
		return fmt.Errorf("pin link of interface %s: %w", iface.name, err)
	}
	st.links[iface.index] = podLink{link: l, kind: iface.kind}
	return nil
}

// detachLocked detaches and unpins the link on ifindex, if any.
func (d *Datapath) detachLocked(st *podState, ifindex int) error {
	pl, ok := st.links[ifindex]
	if !ok {
		return nil
	}
	delete(st.links, ifindex)
	if err := unpinClose(pl.link); err != nil {
		return fmt.Errorf("detach ifindex %d: %w", ifindex, err)
	}
	return nil
}

// captureProgLocked returns the pod's capture program of kind, loading it
// on first use.
func (d *Datapath) captureProgLocked(st *podState, kind captureKind) (*ebpf.Program, error) {
	if st.progs[kind] == nil {
		prog, err := d.loadCapture(st.cookie, kind)
		if err != nil {
			return nil, err
		}
		st.progs[kind] = prog
	}
	return st.progs[kind], nil
}

func (d *Datapath) podPinDir(cookie uint64) string {
	return d.pin(pinPodsDir, strconv.FormatUint(cookie, 10))
}

func (d *Datapath) podLinkPin(cookie uint64, kind captureKind, ifindex int) string {
	return filepath.Join(d.podPinDir(cookie), kind.pinPrefix()+strconv.Itoa(ifindex))
}

// attachTCX attaches prog at TCX ingress of ifindex inside the netns: the
// kernel resolves the ifindex in the caller's netns. The program goes to
// the head of the chain so that no other program can pass a packet to the
// stack before capture decided.
func attachTCX(ns netns.NsHandle, ifindex int, prog *ebpf.Program) (link.Link, error) {
	var l link.Link
	err := podnet.DoIn(ns, func() error {
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
		return nil, fmt.Errorf("attach tcx to ifindex %d: %w", ifindex, err)
	}
	return l, nil
}

// linkAttached reports whether l is attached at TCX ingress of ifindex in
// the netns. When that cannot be told it says yes: detaching a live link
// would open the interface until it is attached again.
func linkAttached(ns netns.NsHandle, ifindex int, l link.Link) bool {
	info, err := l.Info()
	if err != nil {
		return true
	}
	attached := true
	_ = podnet.DoIn(ns, func() error {
		res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
		if err != nil {
			return err
		}
		attached = slices.ContainsFunc(res.Programs, func(p link.AttachedProgram) bool {
			id, ok := p.LinkID()
			return ok && id == info.ID
		})
		return nil
	})
	return attached
}

// podInterfaces lists the interfaces to capture in the netns: those named,
// or when names is empty every non-loopback interface. A named loopback
// interface fails with ErrUnsupportedInterface.
func podInterfaces(ns netns.NsHandle, names []string) ([]podIface, error) {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return nil, fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	var links []netlink.Link
	if len(names) == 0 {
		if links, err = h.LinkList(); err != nil {
			return nil, fmt.Errorf("list interfaces: %w", err)
		}
	} else {
		for _, name := range names {
			l, err := h.LinkByName(name)
			if err != nil {
				return nil, fmt.Errorf("find interface %s: %w", name, err)
			}
			links = append(links, l)
		}
	}
	var out []podIface
	for _, l := range links {
		a := l.Attrs()
		if len(names) == 0 && isLoopback(a) {
			continue
		}
		if isLoopback(a) {
			return nil, fmt.Errorf("interface %s (%s): %w", a.Name, a.EncapType, ErrUnsupportedInterface)
		}
		out = append(out, podIface{index: a.Index, name: a.Name, kind: captureKindOf(a)})
	}
	slices.SortFunc(out, func(a, b podIface) int { return a.index - b.index })
	return out, nil
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

// Remove stops capturing the pod: it stops its interface watcher, detaches
// its links, then deletes its map entries and pins. Removing a pod that is
// not enrolled does nothing.
func (d *Datapath) Remove(key string) error {
	defer d.unlockAndWait()
	d.mu.Lock()
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
	d.stopWatchLocked(st)
	if err := d.detachPod(st); err != nil {
		return err
	}
	if err := d.deletePorts(st.cookie, func(uint32) bool { return true }); err != nil {
		return err
	}
	if err := d.objs.PcPods.Delete(st.cookie); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return fmt.Errorf("delete pod entry: %w", err)
	}
	st.closeProgs()
	delete(d.pods, st.key)
	return nil
}

// closeProgs closes the pod's program instances (their links keep them
// attached while pinned).
func (st *podState) closeProgs() error {
	var errs []error
	for i, p := range st.progs {
		if p != nil {
			errs = append(errs, p.Close())
			st.progs[i] = nil
		}
	}
	return errors.Join(errs...)
}

// detachPod unpins and closes the pod's links, which detaches them, and
// removes its pin directory.
func (d *Datapath) detachPod(st *podState) error {
	for ifindex := range st.links {
		if err := d.detachLocked(st, ifindex); err != nil {
			return err
		}
	}
	if err := os.RemoveAll(d.podPinDir(st.cookie)); err != nil {
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

// Enrolled reports whether the pod with key is enrolled in the datapath:
// its capture entry is written and capture is attached to its interfaces
// or will be as they appear (its watcher runs). Such a pod's new
// connections to captured ports go to the agent's listener or, without
// one, are dropped, also while it has no interface besides lo (Capturing
// is false then). A pod re-adopted by Open and not enrolled since counts
// when it has links.
func (d *Datapath) Enrolled(key string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.pods[key]
	if st == nil || (st.watch == nil && len(st.links) == 0) {
		return false
	}
	var pod portcullisPcPod
	return d.objs.PcPods.Lookup(st.cookie, &pod) == nil
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
		info.WatchErr = st.watchErr
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
// (one instance per pod and per kind of interface), by pod key: the
// Ethernet instance, or the one for interfaces without an Ethernet header
// when the pod has no Ethernet instance. Callers use them to find the
// pods' links (bpftool, leak checks); CaptureProgramIDsAll lists every
// instance.
func (d *Datapath) CaptureProgramIDs() (map[string]ebpf.ProgramID, error) {
	all, err := d.CaptureProgramIDsAll()
	if err != nil {
		return nil, err
	}
	out := make(map[string]ebpf.ProgramID, len(all))
	for key, ids := range all {
		out[key] = ids[0]
	}
	return out, nil
}

// CaptureProgramIDsAll returns the kernel IDs of every capture program
// instance of every pod, by pod key: the Ethernet instance first when
// there is one.
func (d *Datapath) CaptureProgramIDsAll() (map[string][]ebpf.ProgramID, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	out := make(map[string][]ebpf.ProgramID, len(d.pods))
	for key, st := range d.pods {
		for _, prog := range st.progs {
			if prog == nil {
				continue
			}
			info, err := prog.Info()
			if err != nil {
				return nil, fmt.Errorf("capture program info of %s: %w", key, err)
			}
			id, ok := info.ID()
			if !ok {
				return nil, fmt.Errorf("capture program info of %s: no id", key)
			}
			out[key] = append(out[key], id)
		}
	}
	return out, nil
}
