package podnet_test

import (
	"context"
	"io"
	"net"
	"runtime"
	"testing"
	"time"

	"github.com/vishvananda/netns"

	"github.com/portcullis-mesh/portcullis/bpf/podnet"
	"github.com/portcullis-mesh/portcullis/bpf/testenv"
)

func TestDoEntersAndRestoresNamespace(t *testing.T) {
	pod := testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{NoProcess: true})
	want, err := netns.GetFromPath(pod.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer want.Close()

	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	before, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer before.Close()
	err = podnet.Do(pod.NetnsPath, func() error {
		inside, err := netns.Get()
		if err != nil {
			return err
		}
		defer inside.Close()
		if !inside.Equal(want) {
			t.Errorf("inside Do: netns %s, want the pod's %s", inside, want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	after, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer after.Close()
	if !after.Equal(before) {
		t.Errorf("after Do: netns %s, want the original %s", after, before)
	}
}

// TestListenAndDialInsideNamespace: a listener on the pod's loopback is
// reachable with the pod's Dialer and not from the host.
func TestListenAndDialInsideNamespace(t *testing.T) {
	pod := testenv.NewNetwork(t).NewPod(t, testenv.PodOptions{NoProcess: true})
	ln, err := podnet.ListenTCP(context.Background(), pod.NetnsPath, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			io.WriteString(c, "hello") //nolint:errcheck
			c.Close()
		}
	}()
	addr := ln.Addr().String()

	d, err := podnet.NewDialer(pod.NetnsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatalf("dial %s in the pod: %v", addr, err)
	}
	b, err := io.ReadAll(c)
	c.Close()
	if string(b) != "hello" || err != nil {
		t.Errorf("read: got %q, %v, want %q", b, err, "hello")
	}

	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("dial %s from the host: connected, want the pod's loopback to be unreachable", addr)
	}
	if _, err := d.DialContext(ctx, "tcp", "localhost:80"); err == nil {
		t.Error("dial by name: got nil error, want names refused")
	}
}
