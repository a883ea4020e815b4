package kubee2e

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// The agents these tests run are in kubernetes mode, which refuses a pin
// directory that is not on the node's bpffs (agent/daemon checkPinFS): a
// node has one on /sys/fs/bpf (systemd mounts it), so the test host gets
// one too when it has none.
func init() {
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
