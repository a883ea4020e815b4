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
		ifr.SetUint16(unix.IFF_TUN | unix.IFF_NO_PI)
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
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatalf("set %s up in %s: %v", name, netnsPath, err)
	}
	return l
}
