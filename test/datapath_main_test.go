package test

import (
	"testing"

	"github.com/portcullis-mesh/portcullis/bpf/testenv"
)

// TestMain lets testenv re-execute this binary as a pod's process. It is
// the only TestMain of package test.
func TestMain(m *testing.M) { testenv.Main(m) }
