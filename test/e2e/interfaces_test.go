package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// TestPodWithTunnelsIsEnforced: a pod whose netns holds tun devices, one
// up (a VPN client) and one down (as the kernel's fallback tunnels tunl0,
// gre0... are on nodes with the tunnel modules loaded), is enrolled and
// enforced like any other (review 5, finding 1: it was refused and left
// open).
func TestPodWithTunnelsIsEnforced(t *testing.T) {
	e := newEnv(t, demoPods(e2eApp))
	orders := e.pods["orders-api"]
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	for _, cmd := range [][]string{
		{"ip", "tuntap", "add", "dev", "pctun0", "mode", "tun"},
		{"ip", "link", "set", "pctun0", "up"},
		{"ip", "tuntap", "add", "dev", "pctun1", "mode", "tun"},
	} {
		if _, err := orders.Exec(ctx, cmd[0], cmd[1:]...); err != nil {
			t.Fatal(err)
		}
	}
	e.setPolicies(readers("Enforce", "Orders.Read"))
	e.agent.Start()
	tok := mintTokens(t)
	c := hostClient(t)
	if resp, body := do(t, c, http.MethodGet, orders.URL(appPort, "/orders/1"), "", nil); resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("without a token: got %d, want 401 (captured): %s", resp.StatusCode, body)
	}
	if resp, body := do(t, c, http.MethodGet, orders.URL(appPort, "/orders/1"), tok.read, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("with a token: got %d, want 200: %s", resp.StatusCode, body)
	}
}

// TestInterfaceAddedAfterEnrolmentIsEnforced: a second interface added to
// an enrolled pod (Multus, hot-plug, a CNI plugin that runs late) is
// captured as soon as it appears (review 5, finding 3: it reached the app
// directly).
func TestInterfaceAddedAfterEnrolmentIsEnforced(t *testing.T) {
	e := newEnv(t, demoPods(e2eApp))
	orders := e.pods["orders-api"]
	e.setPolicies(readers("Enforce", "Orders.Read"))
	e.agent.Start()

	addr := addSecondInterface(t, orders.NetnsPath)
	url := "http://" + netip.AddrPortFrom(addr, appPort).String() + "/orders/1"
	c := hostClient(t)
	// The watcher attaches capture within milliseconds of the interface
	// appearing; until then the app may answer: wait (bounded) for 401.
	deadline := time.Now().Add(waitTimeout)
	for {
		resp, body, err := tryDo(c, http.MethodGet, url, "", nil)
		if err == nil && resp.StatusCode == http.StatusUnauthorized {
			break
		}
		if time.Now().After(deadline) {
			status := 0
			if resp != nil {
				status = resp.StatusCode
			}
			t.Fatalf("through the added interface without a token: got %d (%v) after %v, want 401: %s", status, err, waitTimeout, body)
		}
		c.CloseIdleConnections() // a connection made before capture is not captured
		time.Sleep(20 * time.Millisecond)
	}
	tok := mintTokens(t)
	if resp, body := do(t, c, http.MethodGet, url, tok.read, nil); resp.StatusCode != http.StatusOK {
		t.Errorf("through the added interface with a token: got %d, want 200: %s", resp.StatusCode, body)
	}
}

// addSecondInterface adds a veth "net1" to the pod, its host end with the
// first address of a random /30 of 100.64.0.0/10 (shared address space,
// unused on test hosts) and the pod end with the second, and returns the
// pod's address. The veth is deleted when the test ends.
func addSecondInterface(t *testing.T, netnsPath string) netip.Addr {
	t.Helper()
	b := make([]byte, 6)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	prefix := netip.AddrFrom4([4]byte{100, 64 + b[0]&0x3f, b[1], b[2] &^ 3})
	hostAddr, podAddr := prefix.Next(), prefix.Next().Next()
	hostName, peerName := "pcm"+hex.EncodeToString(b[3:]), "pcn"+hex.EncodeToString(b[3:])
	ns, err := netns.GetFromPath(netnsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.Close()
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: hostName}, PeerName: peerName, PeerNamespace: netlink.NsFd(int(ns))}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatalf("create veth %s: %v", hostName, err)
	}
	t.Cleanup(func() {
		if l, err := netlink.LinkByName(hostName); err == nil {
			if err := netlink.LinkDel(l); err != nil {
				t.Errorf("delete veth %s: %v", hostName, err)
			}
		}
	})
	addr := func(a netip.Addr) *netlink.Addr {
		return &netlink.Addr{IPNet: &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(30, 32)}}
	}
	if err := netlink.AddrAdd(veth, addr(hostAddr)); err != nil {
		t.Fatal(err)
	}
	if err := netlink.LinkSetUp(veth); err != nil {
		t.Fatal(err)
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	peer, err := h.LinkByName(peerName)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetName(peer, "net1"); err != nil {
		t.Fatal(fmt.Errorf("rename %s: %w", peerName, err))
	}
	if err := h.AddrAdd(peer, addr(podAddr)); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(peer); err != nil {
		t.Fatal(err)
	}
	return podAddr
}
