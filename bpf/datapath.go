package bpf

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/portcullis-mesh/portcullis/bpf/cgroupv2"
	"github.com/portcullis-mesh/portcullis/bpf/podnet"
)

// DefaultPinDir is where Open pins objects when Config.PinDir is empty.
const DefaultPinDir = BPFFSRoot + "/portcullis/agent"

// DefaultListenerPort is the agent's in-pod listener port when
// Config.ListenerPort is zero.
const DefaultListenerPort = 15006

// Config configures Open.
type Config struct {
	// PinDir is the bpffs directory that holds this datapath's programs,
	// maps and links. Empty means DefaultPinDir. bpffs is mounted on
	// /sys/fs/bpf when PinDir is below it and it is not mounted yet. Two
	// datapaths with different PinDirs are independent.
	PinDir string
	// CgroupRoot is the cgroup v2 directory the sockops program is attached
	// to: connections opened below it are attributed. Empty means the root
	// of the cgroup v2 hierarchy (cgroupv2.Root). Changing it for an
	// existing PinDir needs a Teardown first.
	CgroupRoot string
	// ListenerPort is the port of the agent's listener in every enrolled
	// pod's netns. It is never captured. Zero means DefaultListenerPort.
	ListenerPort uint16
	// AccelMark turns on local acceleration (lib/accel.h): connections
	// from sockets carrying this SO_MARK (the agent's upstream sockets) to
	// a local application move their bytes socket to socket through a
	// sockmap instead of TCP/IP over loopback. Bytes redirected that way
	// are invisible to splice(2) on the receiving socket, so only
	// applications that do not splice from their sockets may be
	// accelerated, and the agent must not splice from its upstream
	// sockets. Zero (the default) turns it off.
	AccelMark uint32
	// OnError receives the errors of the interface watchers (see
	// Pod.Interfaces) with the key of the pod concerned: an interface that
	// appeared and could not be captured (an attach error: that interface
	// is then not captured), or a lost
	// subscription to the pod's link events (the watcher subscribes again
	// and lists the links anew). It is called from the watcher's goroutine,
	// never with the datapath's lock held, and should return quickly. It
	// may read the Datapath (Pods, Capturing) but must not call Enroll,
	// Remove, Close or Teardown: they wait for watchers to end, the calling
	// one included; hand the error to another goroutine for that. Nil means
	// the errors are only kept in PodInfo.WatchErr.
	OnError func(key string, err error)
}

// Datapath is a loaded (or re-adopted) datapath. Its methods are safe for
// concurrent use.
type Datapath struct {
	cfg  Config
	spec *ebpf.CollectionSpec // for per-pod capture programs
	objs sharedObjects

	mu      sync.Mutex
	sockops link.Link
	accel   *link.RawAttachProgramOptions // sk_msg attachment, nil when off
	pods    map[string]*podState          // by Pod.Key
	closed  bool
	// stopped are the done channels of watchers stopped under mu, waited
	// for by unlockAndWait once mu is released (a watcher may be waiting
	// for mu to handle one last event).
	stopped []<-chan struct{}
}

// unlockAndWait releases d.mu, then waits for the watchers stopped while it
// was held to end.
func (d *Datapath) unlockAndWait() {
	stopped := d.stopped
	d.stopped = nil
	d.mu.Unlock()
	for _, done := range stopped {
		<-done
	}
}

// sharedObjects are loaded once per datapath; the capture program is
// loaded once per pod (loadCapture).
type sharedObjects struct {
	portcullisMaps
	PcSockops         *ebpf.Program `ebpf:"pc_sockops"`
	PcAccelMsgVerdict *ebpf.Program `ebpf:"pc_accel_msg_verdict"`
}

func (o *sharedObjects) Close() error {
	return errors.Join(o.portcullisMaps.Close(), o.PcSockops.Close(), o.PcAccelMsgVerdict.Close())
}

// unpinnedMaps hold state of one agent run only: the sockets of local
// acceleration, the flags of the agent's listeners. Every load starts them
// empty.
var unpinnedMaps = map[string]bool{
	portcullisMapPcSocks:     true,
	portcullisMapPcUpstreams: true,
	portcullisMapPcListeners: true,
}

// Pin layout below Config.PinDir.
const (
	pinProgSockops  = "prog_sockops"
	pinLinkSockops  = "link_sockops"
	pinMapPrefix    = "map_"
	pinPodsDir      = "pods"   // pods/<netns cookie>/tcx_<ifindex>
	pinLinkPrefix   = "tcx_"   // one pinned TCX link per Ethernet interface
	pinLinkL3Prefix = "tcxl3_" // one per interface without an Ethernet header
	pinPodDirMode   = 0o700    // directories on bpffs
)

// Open loads the datapath, re-adopting pinned objects from a previous run:
// pods, their ports and capture links stay; registered identities and
// connection records are dropped (see RegisterIdentity).
func Open(cfg Config) (*Datapath, error) {
	if cfg.PinDir == "" {
		cfg.PinDir = DefaultPinDir
	}
	if cfg.ListenerPort == 0 {
		cfg.ListenerPort = DefaultListenerPort
	}
	if cfg.CgroupRoot == "" {
		root, err := cgroupv2.Root()
		if err != nil {
			return nil, err
		}
		cfg.CgroupRoot = root
	}
	if err := ensureBPFFS(cfg.PinDir); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(cfg.PinDir, pinPodsDir), pinPodDirMode); err != nil {
		return nil, fmt.Errorf("create pin directory: %w", err)
	}

	d := &Datapath{cfg: cfg, pods: make(map[string]*podState)}
	if err := d.load(); err != nil {
		return nil, err
	}
	if err := d.adopt(); err != nil {
		d.closeHandles()
		return nil, err
	}
	return d, nil
}

func (d *Datapath) pin(name ...string) string {
	return filepath.Join(append([]string{d.cfg.PinDir}, name...)...)
}

// load loads the collection with the pinned maps of a previous run as
// replacements, so their contents survive, and pins any map not pinned yet.
func (d *Datapath) load() error {
	spec, err := loadPortcullis()
	if err != nil {
		return fmt.Errorf("load datapath spec: %w", err)
	}
	if err := spec.Variables[portcullisVarPcListenerPort].Set(d.cfg.ListenerPort); err != nil {
		return fmt.Errorf("set listener port: %w", err)
	}
	if err := spec.Variables[portcullisVarPcAccelMark].Set(d.cfg.AccelMark); err != nil {
		return fmt.Errorf("set acceleration mark: %w", err)
	}
	replacements := make(map[string]*ebpf.Map)
	defer func() {
		for _, m := range replacements {
			m.Close()
		}
	}()
	for name := range spec.Maps {
		if strings.HasPrefix(name, ".") || unpinnedMaps[name] {
			continue // .rodata and friends belong to one program load, unpinnedMaps to one run
		}
		m, err := ebpf.LoadPinnedMap(d.pin(pinMapPrefix+name), nil)
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return fmt.Errorf("load pinned map %s: %w", name, err)
		}
		if err := spec.Maps[name].Compatible(m); err != nil {
			m.Close()
			if name != portcullisMapPcCounters {
				return fmt.Errorf("pinned map %s has another layout (pinned by another version; Teardown first): %w", name, err)
			}
			// A counter was added: the counters start afresh.
			if err := os.Remove(d.pin(pinMapPrefix + name)); err != nil {
				return fmt.Errorf("remove incompatible pinned map %s: %w", name, err)
			}
			continue
		}
		replacements[name] = m
	}
	d.spec = spec
	err = spec.LoadAndAssign(&d.objs, &ebpf.CollectionOptions{MapReplacements: replacements})
	if err != nil {
		return fmt.Errorf("load datapath: %w", verifierDetail(err))
	}
	// Identity numbers belong to one agent run: the agent numbers its
	// workloads afresh when it starts, so a pinned cgroup -> identity entry,
	// or a connection recorded with one, could name another workload now.
	// Callers are anonymous until the agent registers them again.
	for _, name := range []string{portcullisMapPcCgroups, portcullisMapPcConns} {
		if m, ok := replacements[name]; ok {
			if err := clearMap(m); err != nil {
				d.objs.Close()
				return fmt.Errorf("clear pinned map %s: %w", name, err)
			}
		}
	}
	maps := map[string]*ebpf.Map{
		portcullisMapPcCgroups:  d.objs.PcCgroups,
		portcullisMapPcConns:    d.objs.PcConns,
		portcullisMapPcCounters: d.objs.PcCounters,
		portcullisMapPcPods:     d.objs.PcPods,
		portcullisMapPcPorts:    d.objs.PcPorts,
	}
	for name, m := range maps {
		if _, ok := replacements[name]; ok {
			continue
		}
		if err := m.Pin(d.pin(pinMapPrefix + name)); err != nil {
			d.objs.Close()
			return fmt.Errorf("pin map %s: %w", name, err)
		}
	}
	if d.cfg.AccelMark != 0 {
		d.accel = &link.RawAttachProgramOptions{
			Target:  d.objs.PcSocks.FD(),
			Program: d.objs.PcAccelMsgVerdict,
			Attach:  ebpf.AttachSkMsgVerdict,
		}
		if err := link.RawAttachProgram(*d.accel); err != nil {
			d.accel = nil
			d.objs.Close()
			return fmt.Errorf("attach acceleration program to its sockmap: %w", err)
		}
	}
	// Pinned for operators (bpftool); the link keeps it alive. Capture
	// programs are reachable through their pinned links.
	if err := os.Remove(d.pin(pinProgSockops)); err != nil && !errors.Is(err, os.ErrNotExist) {
		d.objs.Close()
		return fmt.Errorf("unpin old sockops program: %w", err)
	}
	if err := d.objs.PcSockops.Pin(d.pin(pinProgSockops)); err != nil {
		d.objs.Close()
		return fmt.Errorf("pin sockops program: %w", err)
	}
	return nil
}

// clearMap deletes every entry of a hash map. Keys are listed first:
// deleting while iterating a hash map can restart or skip the walk.
func clearMap(m *ebpf.Map) error {
	var (
		keys [][]byte
		k, v []byte
	)
	iter := m.Iterate()
	for iter.Next(&k, &v) {
		keys = append(keys, slices.Clone(k))
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("iterate: %w", err)
	}
	for _, k := range keys {
		if err := m.Delete(k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete: %w", err)
		}
	}
	return nil
}

// verifierDetail expands a verifier error with its full log (%+v).
func verifierDetail(err error) error {
	var verr *ebpf.VerifierError
	if errors.As(err, &verr) {
		return fmt.Errorf("%w: %+v", err, verr)
	}
	return err
}

// loadCapture loads the capture program for the interfaces of one kind of
// the pod whose netns has the given cookie, sharing the datapath's maps.
func (d *Datapath) loadCapture(cookie uint64, kind captureKind) (*ebpf.Program, error) {
	spec := d.spec.Copy()
	if err := spec.Variables[portcullisVarPcL3Dev].Set(kind == captureL3); err != nil {
		return nil, fmt.Errorf("set interface kind: %w", err)
	}
	if err := spec.Variables[portcullisVarPcListenerPort].Set(d.cfg.ListenerPort); err != nil {
		return nil, fmt.Errorf("set listener port: %w", err)
	}
	if err := spec.Variables[portcullisVarPcPodNetnsCookie].Set(cookie); err != nil {
		return nil, fmt.Errorf("set netns cookie: %w", err)
	}
	var objs struct {
		Prog *ebpf.Program `ebpf:"pc_capture_in"`
	}
	err := spec.LoadAndAssign(&objs, &ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		portcullisMapPcPods:      d.objs.PcPods,
		portcullisMapPcPorts:     d.objs.PcPorts,
		portcullisMapPcCounters:  d.objs.PcCounters,
		portcullisMapPcCgroups:   d.objs.PcCgroups,
		portcullisMapPcConns:     d.objs.PcConns,
		portcullisMapPcListeners: d.objs.PcListeners,
	}})
	if err != nil {
		return nil, fmt.Errorf("load %s capture program: %w", kind, verifierDetail(err))
	}
	return objs.Prog, nil
}

// adopt attaches sockops (or switches a pinned link to the new program) and
// re-adopts the pinned TCX links of enrolled pods.
func (d *Datapath) adopt() error {
	l, err := link.LoadPinnedLink(d.pin(pinLinkSockops), nil)
	switch {
	case err == nil:
		if err := l.Update(d.objs.PcSockops); err != nil {
			l.Close()
			return fmt.Errorf("update pinned sockops link: %w", err)
		}
	case errors.Is(err, os.ErrNotExist):
		l, err = link.AttachCgroup(link.CgroupOptions{
			Path:    d.cfg.CgroupRoot,
			Attach:  ebpf.AttachCGroupSockOps,
			Program: d.objs.PcSockops,
		})
		if err != nil {
			return fmt.Errorf("attach sockops to cgroup %s: %w", d.cfg.CgroupRoot, err)
		}
		if err := l.Pin(d.pin(pinLinkSockops)); err != nil {
			l.Close()
			return fmt.Errorf("pin sockops link: %w", err)
		}
	default:
		return fmt.Errorf("load pinned sockops link: %w", err)
	}
	d.sockops = l

	// Pods known to the map, then their pinned links.
	var (
		cookie uint64
		pod    portcullisPcPod
	)
	iter := d.objs.PcPods.Iterate()
	for iter.Next(&cookie, &pod) {
		key := cString(pod.Key[:])
		d.pods[key] = &podState{key: key, cookie: cookie, links: make(map[int]podLink)}
	}
	if err := iter.Err(); err != nil {
		return fmt.Errorf("iterate pods: %w", err)
	}
	byCookie := make(map[uint64]*podState, len(d.pods))
	for _, p := range d.pods {
		byCookie[p.cookie] = p
	}
	dirs, err := os.ReadDir(d.pin(pinPodsDir))
	if err != nil {
		return fmt.Errorf("read pinned pods: %w", err)
	}
	for _, dir := range dirs {
		cookie, err := strconv.ParseUint(dir.Name(), 10, 64)
		if err != nil {
			continue // not ours
		}
		if err := d.adoptPodLinks(cookie, byCookie[cookie]); err != nil {
			return err
		}
	}
	return nil
}

// parseLinkPin parses the name of a pinned TCX link: tcx_<ifindex> or
// tcxl3_<ifindex>.
func parseLinkPin(name string) (kind captureKind, ifindex int, ok bool) {
	for _, kind := range []captureKind{captureEthernet, captureL3} {
		if rest, found := strings.CutPrefix(name, kind.pinPrefix()); found {
			ifindex, err := strconv.Atoi(rest)
			return kind, ifindex, err == nil
		}
	}
	return 0, 0, false
}

// adoptPodLinks loads the pinned TCX links of the pod with netns cookie
// cookie and points each at the new program instance of its kind. Links
// whose interface is gone, and links of a pod missing from the pods map,
// are removed.
func (d *Datapath) adoptPodLinks(cookie uint64, p *podState) error {
	dir := d.podPinDir(cookie)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read pinned links of netns %d: %w", cookie, err)
	}
	for _, e := range entries {
		kind, ifindex, ok := parseLinkPin(e.Name())
		if !ok {
			continue
		}
		path := filepath.Join(dir, e.Name())
		l, err := link.LoadPinnedLink(path, nil)
		if err != nil {
			return fmt.Errorf("load pinned link %s: %w", path, err)
		}
		var prog *ebpf.Program
		if p != nil {
			if prog, err = d.captureProgLocked(p, kind); err != nil {
				l.Close()
				return err
			}
		}
		if p == nil || l.Update(prog) != nil {
			// Orphan, or defunct because its interface was destroyed.
			if err := unpinClose(l); err != nil {
				return fmt.Errorf("remove stale link %s: %w", path, err)
			}
			continue
		}
		p.links[ifindex] = podLink{link: l, kind: kind}
	}
	if p == nil {
		if err := os.Remove(dir); err != nil {
			return fmt.Errorf("remove stale pin directory %s: %w", dir, err)
		}
	}
	return nil
}

// unpinClose detaches l at once (BPF_LINK_DETACH), then drops the pin and
// the agent's file descriptor. Without the explicit detach the link would
// only go when its last reference does, which for a pin is deferred to a
// kernel work queue.
func unpinClose(l link.Link) error {
	err := l.Detach()
	if errors.Is(err, ebpf.ErrNotSupported) {
		err = nil
	}
	return errors.Join(err, l.Unpin(), l.Close())
}

func cString(b []int8) string {
	var sb strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c))
	}
	return sb.String()
}

// closeHandles releases every file descriptor, keeping the pins.
func (d *Datapath) closeHandles() error {
	var errs []error
	for _, p := range d.pods {
		d.stopWatchLocked(p)
		for _, l := range p.links {
			errs = append(errs, l.link.Close())
		}
		errs = append(errs, p.closeProgs())
	}
	if d.sockops != nil {
		errs = append(errs, d.sockops.Close())
	}
	errs = append(errs, d.objs.Close())
	return errors.Join(errs...)
}

// Close stops the interface watchers and releases the datapath's handles.
// Everything stays attached and pinned: capture keeps failing closed until
// an agent opens the pin directory again.
func (d *Datapath) Close() error {
	defer d.unlockAndWait()
	d.mu.Lock()
	if d.closed {
		return nil
	}
	d.closed = true
	if err := d.closeHandles(); err != nil {
		return fmt.Errorf("close datapath: %w", err)
	}
	return nil
}

// Teardown detaches every program, removes every pin and the pin directory,
// and closes the datapath. Captured ports become reachable directly.
func (d *Datapath) Teardown() error {
	defer d.unlockAndWait()
	d.mu.Lock()
	if d.closed {
		return errors.New("teardown datapath: already closed")
	}
	var errs []error
	for key, p := range d.pods {
		d.stopWatchLocked(p)
		errs = append(errs, d.detachPod(p), p.closeProgs())
		delete(d.pods, key)
	}
	if d.sockops != nil {
		errs = append(errs, unpinClose(d.sockops))
		d.sockops = nil
	}
	if d.accel != nil {
		errs = append(errs, link.RawDetachProgram(link.RawDetachProgramOptions(*d.accel)))
		d.accel = nil
	}
	errs = append(errs, d.objs.Close())
	errs = append(errs, os.RemoveAll(d.cfg.PinDir))
	d.closed = true
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("teardown datapath: %w", err)
	}
	return nil
}

// PinDir returns the directory holding the datapath's pins.
func (d *Datapath) PinDir() string { return d.cfg.PinDir }

// AccelMark returns the SO_MARK of locally accelerated sockets, 0 when local
// acceleration is off.
func (d *Datapath) AccelMark() uint32 { return d.cfg.AccelMark }

// ListenerPort returns the agent listener port the programs were loaded with.
func (d *Datapath) ListenerPort() uint16 { return d.cfg.ListenerPort }

// Listen opens the agent's listener on ListenerPort inside the netns at
// netnsPath, flagged (pc_listeners, a BPF socket storage map) so that
// capture hands it the pod's captured connections: capture drops them
// rather than give them to a listener without the flag. The flag is set
// before the socket listens, and only this datapath's maps can set it,
// which needs CAP_BPF or CAP_SYS_ADMIN. addr is the address to bind; the
// zero Addr means every address, IPv4 and IPv6, with one dual-stack
// socket, which is what capture expects. The socket is plain TCP, not
// MPTCP.
func (d *Datapath) Listen(ctx context.Context, netnsPath string, addr netip.Addr) (net.Listener, error) {
	host := ""
	if addr.IsValid() {
		host = addr.String()
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var err error
		if cerr := c.Control(func(fd uintptr) { err = d.flagListener(int(fd)) }); cerr != nil {
			return cerr
		}
		return err
	}}
	// Plain TCP: an MPTCP socket (Go's default for listeners where the
	// kernel has MPTCP) listens through a TCP subflow socket of its own,
	// which is what capture's lookup finds, and the flag stored on the
	// MPTCP socket is not on it.
	lc.SetMultipathTCP(false)
	return podnet.Listen(ctx, netnsPath, &lc, net.JoinHostPort(host, strconv.Itoa(int(d.cfg.ListenerPort))))
}

// flagListener flags the socket fd as the agent's listener (pc_listeners).
func (d *Datapath) flagListener(fd int) error {
	if err := d.objs.PcListeners.Update(int32(fd), uint8(1), ebpf.UpdateAny); err != nil {
		return fmt.Errorf("flag listener socket: %w", err)
	}
	return nil
}
