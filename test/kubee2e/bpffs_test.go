package kubee2e

import "github.com/portcullis-mesh/portcullis/bpf/testenv"

// The agents these tests run are in kubernetes mode, which refuses a pin
// directory that is not on the node's bpffs (agent/daemon checkPinFS).
func init() { testenv.EnsureHostBPFFS() }
