package bpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// BPFFSRoot is where bpffs is mounted on Linux by convention; Open mounts it
// there when it is missing and the pin directory is below it.
const BPFFSRoot = "/sys/fs/bpf"

func isBPFFS(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Type == unix.BPF_FS_MAGIC, nil
}

// ensureBPFFS makes sure dir can hold pins: its closest existing ancestor
// must be on bpffs, or be BPFFSRoot, which is then mounted. The mount is
// serialised with a flock so that two agents (or tests) starting together
// do not stack two file systems on the same mount point.
func ensureBPFFS(dir string) error {
	dir = filepath.Clean(dir)
	existing := dir
	for {
		if _, err := os.Stat(existing); err == nil {
			break
		} else if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("stat %s: %w", existing, err)
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		existing = parent
	}
	ok, err := isBPFFS(existing)
	if err != nil {
		return err
	}
	if ok {
		return nil
	}
	if dir != BPFFSRoot && !strings.HasPrefix(dir, BPFFSRoot+"/") {
		return fmt.Errorf("pin directory %s is not on bpffs", dir)
	}
	if err := os.MkdirAll(BPFFSRoot, 0o700); err != nil {
		return fmt.Errorf("create %s: %w", BPFFSRoot, err)
	}
	f, err := os.Open(BPFFSRoot)
	if err != nil {
		return fmt.Errorf("open %s: %w", BPFFSRoot, err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", BPFFSRoot, err)
	}
	defer unix.Flock(int(f.Fd()), unix.LOCK_UN) //nolint:errcheck // closing the file unlocks too
	if ok, err := isBPFFS(BPFFSRoot); err != nil || ok {
		return err
	}
	if err := unix.Mount("bpffs", BPFFSRoot, "bpf", 0, "mode=0700"); err != nil {
		return fmt.Errorf("mount bpffs on %s: %w", BPFFSRoot, err)
	}
	return nil
}
