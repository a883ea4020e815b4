package daemon

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// checkPinFS returns an error unless dir, or its closest existing ancestor
// when dir does not exist yet, is on a bpffs. In kubernetes mode the agent
// must not mount one itself, as the datapath does when the node has none:
// that mount lives in the container's mount namespace only, so the pins,
// and with them the capture that keeps pods closed while the agent
// restarts, would die with the container, and nothing would be re-adopted.
func checkPinFS(dir string) error {
	existing := filepath.Clean(dir)
	for {
		_, err := os.Stat(existing)
		if err == nil {
			break
		}
		if !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("stat %s: %w", existing, err)
		}
		parent := filepath.Dir(existing)
		if parent == existing {
			break
		}
		existing = parent
	}
	var st unix.Statfs_t
	if err := unix.Statfs(existing, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", existing, err)
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("pin directory %s is not on a bpffs (%s has file system magic %#x, want %#x): "+
			"pins must outlive the agent's container, so mount the node's bpffs there "+
			"(the DaemonSet's hostPath volume /sys/fs/bpf, mountPropagation HostToContainer) "+
			"and make sure the node has bpffs mounted on /sys/fs/bpf (systemd does)",
			dir, existing, st.Type, unix.BPF_FS_MAGIC)
	}
	return nil
}
