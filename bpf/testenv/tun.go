package testenv

import (
	"fmt"
	"os"
	"testing"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/portcullis-mesh/portcullis/bpf/podnet"
)

// Tun creates a tun device named name, down, in the network namespace at
// netnsPath: IP packets, no link-layer header (IFF_TUN|IFF_NO_PI, so
// ARPHRD_NONE). linkType >= 0 sets its ARPHRD type (TUNSETLINK), which
// makes a device of a link type the kernel has no driver for here; the
// driver still carries IP packets. The returned file is the device's
// queue, non-blocking so that deadlines work: packets written to it arrive
// at the device's ingress. The device is deleted when the test ends (with
// the only descriptor of a non-persistent tun device).
func Tun(t testing.TB, netnsPath, name string, linkType int) *os.File {
	t.Helper()
	return TunFlags(t, netnsPath, name, unix.IFF_TUN|unix.IFF_NO_PI, linkType)
}

// TunFlags is Tun with the device's TUNSETIFF flags, e.g. IFF_TUN |
// IFF_VNET_HDR for a queue whose packets carry a virtio-net header.
func TunFlags(t testing.TB, netnsPath, name string, flags uint16, linkType int) *os.File {
	t.Helper()
	var tun *os.File
	err := podnet.Do(netnsPath, func() error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return fmt.Errorf("open /dev/net/tun: %w", err)
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(fd)
			return err
		}
		ifr.SetUint16(flags)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF: %w", err)
		}
		if linkType >= 0 {
			if err := unix.IoctlSetInt(fd, unix.TUNSETLINK, linkType); err != nil {
				unix.Close(fd)
				return fmt.Errorf("TUNSETLINK: %w", err)
			}
		}
		// Only once the device is attached can the runtime poll it.
		tun = os.NewFile(uintptr(fd), name)
		return nil
	})
	if tun != nil {
		t.Cleanup(func() { tun.Close() })
	}
	if err != nil {
		t.Fatalf("tun %s in %s: %v", name, netnsPath, err)
	}
	return tun
}

// SetLinkUp sets the interface named name in the network namespace at
// netnsPath up and returns it.
func SetLinkUp(t testing.TB, netnsPath, name string) netlink.Link {
	t.Helper()
	h := Netlink(t, netnsPath)
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatalf("set %s up in %s: %v", name, netnsPath, err)
	}
	return l
}

// EnsureHostBPFFS mounts a bpffs on /sys/fs/bpf when the host has none
// there, as a node has (systemd mounts it): kubernetes-mode agents refuse a
// pin directory that is not on it. Call it from the init or TestMain of
// test packages that run such agents; it does nothing unless root.
func EnsureHostBPFFS() {
	if os.Geteuid() != 0 {
		return
	}
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err == nil && st.Type == unix.BPF_FS_MAGIC {
		return
	}
	if err := unix.Mount("bpffs", "/sys/fs/bpf", "bpf", 0, "mode=0700"); err != nil {
		fmt.Fprintf(os.Stderr, "mount bpffs on /sys/fs/bpf: %v (kubernetes-mode agents will refuse to start)\n", err)
	}
}

// Netlink returns a netlink handle in the network namespace at netnsPath,
// closed when the test ends.
func Netlink(t testing.TB, netnsPath string) *netlink.Handle {
	t.Helper()
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatalf("netlink in %s: %v", netnsPath, err)
	}
	t.Cleanup(h.Close)
	return h
}
