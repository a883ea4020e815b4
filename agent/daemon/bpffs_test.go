package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/portcullis-mesh/portcullis/bpf/testenv"
)

func TestCheckPinFSNotBPFFS(t *testing.T) {
	dir := t.TempDir() // tmpfs or a disk, never a bpffs
	for _, d := range []string{dir, filepath.Join(dir, "portcullis", "agent")} {
		err := checkPinFS(d)
		if err == nil || !strings.Contains(err.Error(), "not on a bpffs") || !strings.Contains(err.Error(), "hostPath volume /sys/fs/bpf") {
			t.Errorf("checkPinFS(%s): got %v, want an error naming the hostPath to mount", d, err)
		}
	}
}

func TestCheckPinFSBPFFS(t *testing.T) {
	testenv.RequirePrivileged(t)
	mnt := t.TempDir()
	if err := unix.Mount("bpffs", mnt, "bpf", 0, "mode=0700"); err != nil {
		t.Fatalf("mount bpffs on %s: %v", mnt, err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(mnt, unix.MNT_DETACH); err != nil {
			t.Errorf("unmount %s: %v", mnt, err)
		}
	})
	if err := os.Mkdir(filepath.Join(mnt, "portcullis"), 0o700); err != nil {
		t.Fatal(err)
	}
	// The pin directory itself, one that exists in part, and the root.
	for _, d := range []string{mnt, filepath.Join(mnt, "portcullis"), filepath.Join(mnt, "portcullis", "agent", "pods")} {
		if err := checkPinFS(d); err != nil {
			t.Errorf("checkPinFS(%s): got %v, want nil", d, err)
		}
	}
}
