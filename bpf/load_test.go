package bpf

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/portcullis-mesh/portcullis/bpf/testenv"
)

// testPinDir returns a pin directory unique to the test.
func testPinDir(t testing.TB) string {
	t.Helper()
	return filepath.Join(BPFFSRoot, "portcullis", fmt.Sprintf("test-%d-%s", os.Getpid(), filepath.Base(t.Name())))
}

func openTest(t *testing.T) *Datapath {
	t.Helper()
	return openTestWith(t, Config{})
}

// openTestWith opens a datapath with cfg and a pin directory unique to the
// test, torn down when the test ends.
func openTestWith(t testing.TB, cfg Config) *Datapath {
	t.Helper()
	testenv.RequirePrivileged(t)
	cfg.PinDir = testPinDir(t)
	d, err := Open(cfg)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() {
		if err := d.Teardown(); err != nil {
			t.Errorf("Teardown: %v", err)
		}
	})
	return d
}

func TestOpenLoadsAgainstRunningKernel(t *testing.T) {
	d := openTest(t)
	if _, err := os.Stat(filepath.Join(d.PinDir(), pinLinkSockops)); err != nil {
		t.Errorf("sockops link not pinned: %v", err)
	}
}
