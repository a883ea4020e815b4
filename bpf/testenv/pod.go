package testenv

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/portcullis-mesh/portcullis/bpf/cgroupv2"
	"github.com/portcullis-mesh/portcullis/bpf/podnet"
)

// PodInterface is the name of the pod's interface inside its netns.
const PodInterface = "eth0"

// commandTimeout bounds each exchange with a pod process.
const commandTimeout = 15 * time.Second

// readyTimeout bounds the wait for a new pod's IPv6 address to be usable.
const readyTimeout = 10 * time.Second

// Network is a bridge in the host netns with an IPv4 and an IPv6 subnet.
type Network struct {
	// Bridge is the bridge's name in the host netns.
	Bridge string
	// Subnet4 and Subnet6 are the network's prefixes.
	Subnet4, Subnet6 netip.Prefix
	// Host4 and Host6 are the host's addresses on the bridge.
	Host4, Host6 netip.Addr

	mu   sync.Mutex
	next int
}

// randomSuffix returns n random hex characters.
func randomSuffix(n int) string {
	b := make([]byte, (n+1)/2)
	if _, err := rand.Read(b); err != nil {
		panic(err) // crypto/rand never fails on Linux
	}
	return hex.EncodeToString(b)[:n]
}

// subnets serialises subnet choice within the process and remembers the
// subnets it handed out, so that parallel tests never share one; other
// processes are seen through the host's addresses.
var subnets struct {
	sync.Mutex
	inUse map[netip.Prefix]bool
}

// NewNetwork creates a bridge with a subnet no interface of the host netns
// uses yet. It is deleted when the test ends.
func NewNetwork(t testing.TB) *Network {
	t.Helper()
	RequirePrivileged(t)
	n := &Network{Bridge: "pcbr" + randomSuffix(8), next: 10}
	subnets.Lock()
	defer subnets.Unlock()
	if subnets.inUse == nil {
		subnets.inUse = make(map[netip.Prefix]bool)
	}
	used := make(map[netip.Prefix]bool)
	for p := range subnets.inUse {
		used[p] = true
	}
	addrs, err := netlink.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		t.Fatalf("list host addresses: %v", err)
	}
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok {
			used[netip.PrefixFrom(ip, 24).Masked()] = true
		}
	}
	start, err := rand.Int(rand.Reader, big.NewInt(512))
	if err != nil {
		t.Fatalf("random subnet: %v", err)
	}
	for i := range 512 {
		idx := (int(start.Int64()) + i) % 512
		p := netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 18 + byte(idx/256), byte(idx % 256), 0}), 24)
		if used[p] {
			continue
		}
		n.Subnet4 = p
		n.Subnet6 = netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0x70, 0x63, 0x75, 0x6c, byte(idx >> 8), byte(idx)}), 64)
		break
	}
	if !n.Subnet4.IsValid() {
		t.Fatal("no free /24 in 198.18.0.0/15")
	}
	subnets.inUse[n.Subnet4] = true
	t.Cleanup(func() {
		subnets.Lock()
		defer subnets.Unlock()
		delete(subnets.inUse, n.Subnet4)
	})
	n.Host4 = n.Subnet4.Addr().Next()
	n.Host6 = n.Subnet6.Addr().Next()

	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: n.Bridge}}
	if err := netlink.LinkAdd(br); err != nil {
		t.Fatalf("create bridge %s: %v", n.Bridge, err)
	}
	t.Cleanup(func() {
		if err := netlink.LinkDel(br); err != nil {
			t.Errorf("delete bridge %s: %v", n.Bridge, err)
		}
	})
	for _, a := range []netip.Prefix{netip.PrefixFrom(n.Host4, 24), netip.PrefixFrom(n.Host6, 64)} {
		if err := netlink.AddrAdd(br, nlAddr(a)); err != nil {
			t.Fatalf("add %s to %s: %v", a, n.Bridge, err)
		}
	}
	if err := netlink.LinkSetUp(br); err != nil {
		t.Fatalf("set %s up: %v", n.Bridge, err)
	}
	return n
}

// nlAddr is a netlink address without duplicate address detection, so an
// IPv6 address is usable at once instead of tentative for a second.
func nlAddr(p netip.Prefix) *netlink.Addr {
	return &netlink.Addr{
		IPNet: &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())},
		Flags: unix.IFA_F_NODAD,
	}
}

// PodOptions configure NewPod.
type PodOptions struct {
	// AppPorts are the ports the pod's process serves HTTP on (IPv4 and
	// IPv6). Empty means no listening port (the process still runs).
	AppPorts []uint16
	// NoProcess skips the process: the pod is netns, veth, addresses and
	// cgroup only (cheap, for scale tests).
	NoProcess bool
	// ContainerCgroup, when set, puts the process in a child cgroup of that
	// name below the pod's cgroup, as Kubernetes puts containers below the
	// pod's cgroup. Empty means the pod's cgroup itself.
	ContainerCgroup string
	// NoInterface leaves the netns with lo only, as a CNI plugin that has
	// not run yet would: Pod.AddInterface creates the veth later. The
	// pod's addresses are reserved anyway.
	NoInterface bool
}

// Pod is a network namespace with a veth to the Network, addresses, a
// cgroup and usually a process in both.
type Pod struct {
	// Name is unique on the host; the netns has the same name.
	Name string
	// NetnsPath is /run/netns/<Name>.
	NetnsPath string
	// HostVeth is the bridge side of the pod's veth pair.
	HostVeth string
	// IPv4 and IPv6 are the pod's addresses on PodInterface.
	IPv4, IPv6 netip.Addr
	// CgroupPath is the pod's cgroup v2 directory, CgroupID its ID.
	CgroupPath string
	CgroupID   uint64
	// ProcessCgroupPath is the cgroup the process runs in: CgroupPath, or
	// its PodOptions.ContainerCgroup child. ProcessCgroupID is its ID.
	ProcessCgroupPath string
	ProcessCgroupID   uint64
	// AppPorts are the ports the pod's process serves.
	AppPorts []uint16

	net  *Network
	proc *podProcess
}

// NewPod creates a pod on n. It is deleted when the test ends.
func (n *Network) NewPod(t testing.TB, opts PodOptions) *Pod {
	t.Helper()
	n.mu.Lock()
	host := n.next
	n.next++
	n.mu.Unlock()
	if host > 250 {
		t.Fatalf("network %s is full", n.Bridge)
	}
	p := &Pod{
		Name:     "pcpod-" + randomSuffix(10),
		HostVeth: "pcv" + randomSuffix(10),
		IPv4:     addrAt(n.Subnet4.Addr(), host),
		IPv6:     addrAt(n.Subnet6.Addr(), host),
		AppPorts: opts.AppPorts,
		net:      n,
	}
	p.NetnsPath = filepath.Join(netnsRunDir, p.Name)

	ns, err := newNamedNetns(p.Name)
	if err != nil {
		t.Fatalf("create netns %s: %v", p.Name, err)
	}
	t.Cleanup(func() {
		ns.Close()
		if err := deleteNamedNetns(p.NetnsPath); err != nil {
			t.Errorf("delete netns %s: %v", p.Name, err)
		}
	})
	if opts.NoInterface {
		if err := setLoUp(ns); err != nil {
			t.Fatalf("pod %s: %v", p.Name, err)
		}
	} else {
		p.addInterface(t, ns)
	}

	root, err := cgroupv2.Root()
	if err != nil {
		t.Fatalf("cgroup v2: %v", err)
	}
	p.CgroupPath = filepath.Join(root, p.Name)
	if err := os.Mkdir(p.CgroupPath, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		if err := removeCgroup(p.CgroupPath); err != nil {
			t.Errorf("remove cgroup: %v", err)
		}
	})
	if p.CgroupID, err = cgroupv2.ID(p.CgroupPath); err != nil {
		t.Fatalf("cgroup id: %v", err)
	}
	p.ProcessCgroupPath, p.ProcessCgroupID = p.CgroupPath, p.CgroupID
	if opts.ContainerCgroup != "" {
		p.ProcessCgroupPath = filepath.Join(p.CgroupPath, opts.ContainerCgroup)
		if err := os.Mkdir(p.ProcessCgroupPath, 0o755); err != nil {
			t.Fatalf("create container cgroup: %v", err)
		}
		t.Cleanup(func() {
			if err := removeCgroup(p.ProcessCgroupPath); err != nil {
				t.Errorf("remove container cgroup: %v", err)
			}
		})
		if p.ProcessCgroupID, err = cgroupv2.ID(p.ProcessCgroupPath); err != nil {
			t.Fatalf("cgroup id: %v", err)
		}
	}
	if opts.NoProcess {
		return p
	}
	p.proc, err = startPodProcess(p)
	if err != nil {
		t.Fatalf("start process of pod %s: %v", p.Name, err)
	}
	t.Cleanup(func() {
		if err := p.proc.stop(); err != nil {
			t.Errorf("stop process of pod %s: %v", p.Name, err)
		}
	})
	return p
}

// AddInterface creates the pod's veth (PodInterface inside), its addresses
// and routes, for a pod made with PodOptions.NoInterface.
func (p *Pod) AddInterface(t testing.TB) {
	t.Helper()
	ns, err := netns.GetFromPath(p.NetnsPath)
	if err != nil {
		t.Fatalf("open netns of pod %s: %v", p.Name, err)
	}
	defer ns.Close()
	p.addInterface(t, ns)
}

func (p *Pod) addInterface(t testing.TB, ns netns.NsHandle) {
	t.Helper()
	// Registered first: wire may fail half way.
	t.Cleanup(func() {
		// Deleting one end deletes the pair; the netns going away does
		// too, so a missing link is fine.
		if l, err := netlink.LinkByName(p.HostVeth); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				t.Errorf("delete veth %s: %v", p.HostVeth, err)
			}
		}
	})
	if err := p.wire(p.net, ns); err != nil {
		t.Fatalf("wire pod %s: %v", p.Name, err)
	}
}

func setLoUp(ns netns.NsHandle) error {
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in pod: %w", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	return nil
}

func addrAt(base netip.Addr, host int) netip.Addr {
	b := base.AsSlice()
	b[len(b)-1] = byte(host)
	a, _ := netip.AddrFromSlice(b)
	return a
}

// netnsRunDir is where named network namespaces are bind-mounted.
const netnsRunDir = "/run/netns"

var netnsDirOnce struct {
	sync.Once
	err error
}

// prepareNetnsDir makes /run/netns a shared mount point, as iproute2's
// "ip netns add" does (ip/ipnetns.c, netns_add). Without it, an "ip netns
// add" run later by anyone bind-mounts /run/netns over itself and hides our
// namespace mounts, which then can no longer be unmounted or removed.
func prepareNetnsDir() error {
	netnsDirOnce.Do(func() {
		if err := os.MkdirAll(netnsRunDir, 0o755); err != nil {
			netnsDirOnce.err = err
			return
		}
		err := unix.Mount("", netnsRunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if errors.Is(err, unix.EINVAL) {
			// Not a mount point yet: make it one, then shared.
			if err := unix.Mount(netnsRunDir, netnsRunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
				netnsDirOnce.err = fmt.Errorf("bind %s: %w", netnsRunDir, err)
				return
			}
			err = unix.Mount("", netnsRunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		}
		if err != nil {
			netnsDirOnce.err = fmt.Errorf("make %s shared: %w", netnsRunDir, err)
		}
	})
	return netnsDirOnce.err
}

// newNamedNetns creates /run/netns/<name> without moving the caller:
// netns.NewNamed switches the calling thread, so it runs on a locked thread
// that is switched back (or, if that fails, left locked to die).
func newNamedNetns(name string) (netns.NsHandle, error) {
	if err := prepareNetnsDir(); err != nil {
		return 0, err
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return 0, err
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if restoreErr := netns.Set(orig); restoreErr != nil {
		return 0, errors.Join(err, fmt.Errorf("restore netns: %w", restoreErr))
	}
	runtime.UnlockOSThread()
	return ns, err
}

// wire creates the veth pair, moves one end into the pod and configures
// addresses and routes on both sides.
func (p *Pod) wire(n *Network, ns netns.NsHandle) error {
	br, err := netlink.LinkByName(n.Bridge)
	if err != nil {
		return fmt.Errorf("find bridge: %w", err)
	}
	peer := "pcp" + randomSuffix(10)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: p.HostVeth, MasterIndex: br.Attrs().Index},
		PeerName:      peer,
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("create veth %s: %w", p.HostVeth, err)
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		return fmt.Errorf("set %s up: %w", p.HostVeth, err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("netlink in pod: %w", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("find lo: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return fmt.Errorf("set lo up: %w", err)
	}
	eth, err := h.LinkByName(peer)
	if err != nil {
		return fmt.Errorf("find %s: %w", peer, err)
	}
	if err := h.LinkSetName(eth, PodInterface); err != nil {
		return fmt.Errorf("rename %s: %w", peer, err)
	}
	for _, a := range []netip.Prefix{netip.PrefixFrom(p.IPv4, 24), netip.PrefixFrom(p.IPv6, 64)} {
		if err := h.AddrAdd(eth, nlAddr(a)); err != nil {
			return fmt.Errorf("add %s: %w", a, err)
		}
	}
	if err := h.LinkSetUp(eth); err != nil {
		return fmt.Errorf("set %s up: %w", PodInterface, err)
	}
	for _, gw := range []netip.Addr{n.Host4, n.Host6} {
		r := &netlink.Route{LinkIndex: eth.Attrs().Index, Gw: gw.AsSlice()}
		if err := h.RouteAdd(r); err != nil {
			return fmt.Errorf("add default route via %s: %w", gw, err)
		}
	}
	return waitIPv6Ready(ns, p.IPv6)
}

// waitIPv6Ready waits until addr has its local route in ns. The kernel
// inserts that route from its address work queue some time after the
// address was added, even with IFA_F_NODAD; a connection to addr made before
// goes out of the pod's interface to resolve the address and fails with
// EHOSTUNREACH after the neighbour timeout.
func waitIPv6Ready(ns netns.NsHandle, addr netip.Addr) error {
	updates := make(chan netlink.RouteUpdate, 64)
	done := make(chan struct{})
	defer close(done)
	var subErr error
	if err := netlink.RouteSubscribeWithOptions(updates, done, netlink.RouteSubscribeOptions{
		Namespace:     &ns,
		ListExisting:  true,
		ErrorCallback: func(err error) { subErr = err },
	}); err != nil {
		return fmt.Errorf("subscribe to route updates: %w", err)
	}
	timeout := time.NewTimer(readyTimeout)
	defer timeout.Stop()
	for {
		select {
		case u, ok := <-updates:
			if !ok {
				return fmt.Errorf("route updates ended before %s had its local route: %v", addr, subErr)
			}
			if u.Type != unix.RTM_NEWROUTE || u.Route.Type != unix.RTN_LOCAL || u.Dst == nil {
				continue
			}
			dst, _ := netip.AddrFromSlice(u.Dst.IP)
			if ones, _ := u.Dst.Mask.Size(); dst.Unmap() == addr && ones == 128 {
				return nil
			}
		case <-timeout.C:
			return fmt.Errorf("%s has no local route after %v", addr, readyTimeout)
		}
	}
}

// deleteNamedNetns unmounts and removes /run/netns/<name>. The removal is
// retried (bounded) on EBUSY: the lazy unmount can still be propagating to
// peer mounts when unlink runs.
func deleteNamedNetns(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("unmount %s: %w", path, err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := os.Remove(path)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return err
		}
		// Another mount may sit on top (propagation); detach it too.
		_ = unix.Unmount(path, unix.MNT_DETACH)
		time.Sleep(10 * time.Millisecond)
	}
}

// removeCgroup removes a cgroup directory, waiting (bounded) for the
// kernel to notice that its last process exited.
func removeCgroup(path string) error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := os.Remove(path)
		if err == nil || errors.Is(err, os.ErrNotExist) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Exec runs a command inside the pod's netns (not its cgroup) and returns
// its combined output.
func (p *Pod) Exec(ctx context.Context, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := podnet.Do(p.NetnsPath, cmd.Start); err != nil {
		return nil, fmt.Errorf("start %s in %s: %w", name, p.Name, err)
	}
	if err := cmd.Wait(); err != nil {
		return out.Bytes(), fmt.Errorf("%s in %s: %w: %s", name, p.Name, err, out.Bytes())
	}
	return out.Bytes(), nil
}

// Accepted returns how many connections the pod's app accepted on port.
func (p *Pod) Accepted(port uint16) (int, error) {
	if p.proc == nil {
		return 0, errors.New("pod has no process")
	}
	reply, err := p.proc.command("accepted " + strconv.Itoa(int(port)))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(reply)
}

// GetResult is the outcome of Pod.Get.
type GetResult struct {
	// Local is the address of the pod process's connecting socket.
	Local netip.AddrPort
	// Response is everything the server sent.
	Response string
}

// Get makes the pod's process (inside the pod's netns and cgroup) connect
// to addr, send "GET / HTTP/1.0" and read the answer until the server
// closes, within 5 seconds.
func (p *Pod) Get(addr netip.AddrPort) (GetResult, error) {
	return p.GetWithin(addr, 0)
}

// GetWithin is Get with its own time limit (at most 10 seconds; 0 means 5
// seconds), for connections expected to fail.
func (p *Pod) GetWithin(addr netip.AddrPort, timeout time.Duration) (GetResult, error) {
	if p.proc == nil {
		return GetResult{}, errors.New("pod has no process")
	}
	if timeout > 10*time.Second {
		timeout = 10 * time.Second
	}
	reply, err := p.proc.command(fmt.Sprintf("get %s %d", addr, timeout.Milliseconds()))
	if err != nil {
		return GetResult{}, err
	}
	local, b64, _ := strings.Cut(reply, " ")
	body, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return GetResult{}, fmt.Errorf("decode reply: %w", err)
	}
	lap, err := netip.ParseAddrPort(local)
	if err != nil {
		return GetResult{}, fmt.Errorf("parse local address: %w", err)
	}
	return GetResult{Local: netip.AddrPortFrom(lap.Addr().Unmap(), lap.Port()), Response: string(body)}, nil
}

// podProcess is the re-executed test binary serving as the pod's app.
type podProcess struct {
	cmd    *exec.Cmd
	stdin  *os.File
	stdout *os.File
	lines  *bufio.Reader
	stderr bytes.Buffer

	mu sync.Mutex // one command at a time
}

func startPodProcess(p *Pod) (*podProcess, error) {
	self, err := os.Executable()
	if err != nil {
		return nil, fmt.Errorf("find test binary: %w", err)
	}
	cg, err := os.Open(p.ProcessCgroupPath)
	if err != nil {
		return nil, fmt.Errorf("open cgroup: %w", err)
	}
	defer cg.Close()
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("pipe: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, fmt.Errorf("pipe: %w", err)
	}
	ports := make([]string, len(p.AppPorts))
	for i, port := range p.AppPorts {
		ports[i] = strconv.Itoa(int(port))
	}
	pp := &podProcess{stdin: inW, stdout: outR, lines: bufio.NewReader(outR)}
	pp.cmd = exec.Command(self, "-test.run=^$")
	pp.cmd.Env = append(os.Environ(), childEnv+"="+p.Name, childPortsEnv+"="+strings.Join(ports, ","))
	pp.cmd.Stdin, pp.cmd.Stdout, pp.cmd.Stderr = inR, outW, &pp.stderr
	// Born in the pod's cgroup (clone3 CLONE_INTO_CGROUP) and, forked from
	// a thread inside the pod's netns, in the pod's netns.
	pp.cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	err = podnet.Do(p.NetnsPath, pp.cmd.Start)
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, err
	}
	// The process stops when its stdin closes; the deadline bounds a hang.
	ready, err := pp.readLine()
	if err != nil || ready != "ready" {
		stopErr := pp.stop()
		return nil, fmt.Errorf("wait for ready (got %q): %w; stderr: %s", ready, errors.Join(err, stopErr), pp.stderr.String())
	}
	return pp, nil
}

func (pp *podProcess) readLine() (string, error) {
	if err := pp.stdout.SetReadDeadline(time.Now().Add(commandTimeout)); err != nil {
		return "", err
	}
	line, err := pp.lines.ReadString('\n')
	return strings.TrimSuffix(line, "\n"), err
}

// command sends one command and returns the text after "ok ", or the
// decoded error after "err ".
func (pp *podProcess) command(cmd string) (string, error) {
	pp.mu.Lock()
	defer pp.mu.Unlock()
	if _, err := fmt.Fprintln(pp.stdin, cmd); err != nil {
		return "", fmt.Errorf("send %q: %w", cmd, err)
	}
	line, err := pp.readLine()
	if err != nil {
		return "", fmt.Errorf("read reply to %q: %w", cmd, err)
	}
	status, rest, _ := strings.Cut(line, " ")
	switch status {
	case "ok":
		return rest, nil
	case "err":
		msg, _ := base64.StdEncoding.DecodeString(rest)
		return "", errors.New(string(msg))
	}
	return "", fmt.Errorf("reply to %q: unexpected %q", cmd, line)
}

// stop closes stdin (the process exits), kills it if it does not exit in
// time, and reaps it.
func (pp *podProcess) stop() error {
	pp.stdin.Close()
	done := make(chan error, 1)
	go func() { done <- pp.cmd.Wait() }()
	var err error
	select {
	case err = <-done:
	case <-time.After(commandTimeout):
		_ = pp.cmd.Process.Kill()
		err = <-done
	}
	pp.stdout.Close()
	if err != nil {
		return fmt.Errorf("pod process: %w; stderr: %s", err, pp.stderr.String())
	}
	return nil
}
