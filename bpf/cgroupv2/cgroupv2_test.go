package cgroupv2

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

func TestRootAndID(t *testing.T) {
	root, err := Root()
	if err != nil {
		t.Skipf("no cgroup v2 here: %v", err)
	}
	ok, err := IsCgroup2(root)
	if err != nil || !ok {
		t.Fatalf("IsCgroup2(%s) = %v, %v, want true", root, ok, err)
	}
	id, err := ID(root)
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(root, &st); err != nil {
		t.Fatal(err)
	}
	if id != st.Ino {
		t.Errorf("ID(%s) = %d, want inode %d", root, id, st.Ino)
	}
	if _, err := ID(os.TempDir()); err == nil {
		t.Errorf("ID(%s): got nil error, want not a cgroup", os.TempDir())
	}
	if ok, err := IsCgroup2(filepath.Join(root, "does-not-exist-portcullis")); ok || err != nil {
		t.Errorf("IsCgroup2(missing) = %v, %v, want false, nil", ok, err)
	}
}
