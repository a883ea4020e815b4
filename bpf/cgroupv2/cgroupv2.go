// Package cgroupv2 finds the cgroup v2 hierarchy and names cgroups the way
// the kernel's BPF helpers do (bpf_get_current_cgroup_id).
package cgroupv2

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// Candidates are the mount points Root inspects, in order: the unified
// hierarchy of a hybrid systemd layout, then the pure cgroup v2 layout that
// Kubernetes nodes use.
var Candidates = []string{"/sys/fs/cgroup/unified", "/sys/fs/cgroup"}

// ErrNotMounted is returned by Root when no cgroup v2 hierarchy is mounted.
var ErrNotMounted = errors.New("no cgroup v2 hierarchy mounted")

// Root returns the mount point of the cgroup v2 hierarchy.
func Root() (string, error) {
	for _, p := range Candidates {
		ok, err := IsCgroup2(p)
		if err != nil {
			return "", err
		}
		if ok {
			return p, nil
		}
	}
	return "", fmt.Errorf("find cgroup v2 mount in %v: %w", Candidates, ErrNotMounted)
}

// IsCgroup2 reports whether path is the root or a directory of a cgroup v2
// file system. A missing path is not an error.
func IsCgroup2(path string) (bool, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return false, nil
		}
		return false, fmt.Errorf("statfs %s: %w", path, err)
	}
	return st.Type == unix.CGROUP2_SUPER_MAGIC, nil
}

// ID returns the ID of the cgroup v2 directory at path: the inode number of
// the directory, which is the kernfs node ID that bpf_get_current_cgroup_id
// and bpf_get_current_ancestor_cgroup_id return.
func ID(path string) (uint64, error) {
	ok, err := IsCgroup2(path)
	if err != nil {
		return 0, err
	}
	if !ok {
		return 0, fmt.Errorf("cgroup id of %s: not a cgroup v2 directory", path)
	}
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, fmt.Errorf("stat %s: %w", path, err)
	}
	return st.Ino, nil
}
