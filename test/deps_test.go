package test

import (
	"encoding/json"
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/portcullis-mesh/portcullis"

// TestLayering keeps data flowing one way: bpf → identity → tokencheck →
// agent. A package may import only the layers listed for it; nothing
// imports agent, tools or test.
func TestLayering(t *testing.T) {
	// forbidden[prefix] lists the module prefixes that packages under prefix
	// must not import (directly or transitively).
	forbidden := map[string][]string{
		"bpf":        {"identity", "tokencheck", "agent", "tools", "test"},
		"identity":   {"tokencheck", "agent", "tools", "test"},
		"tokencheck": {"bpf", "agent", "tools", "test"},
		"agent":      {"tools", "test"},
		"tools":      {"test"},
	}
	// Test helpers are imported from tests only; they sit under bpf/testenv.
	allowedExceptions := map[string]bool{}

	out, err := exec.Command("go", "list", "-json=ImportPath,Deps", module+"/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	dec := json.NewDecoder(strings.NewReader(string(out)))
	for dec.More() {
		var p struct {
			ImportPath string
			Deps       []string
		}
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("decode go list: %v", err)
		}
		rel := strings.TrimPrefix(strings.TrimPrefix(p.ImportPath, module), "/")
		top := strings.SplitN(rel, "/", 2)[0]
		for _, dep := range p.Deps {
			if !strings.HasPrefix(dep, module+"/") {
				continue
			}
			drel := strings.TrimPrefix(dep, module+"/")
			dtop := strings.SplitN(drel, "/", 2)[0]
			for _, bad := range forbidden[top] {
				if dtop == bad && !allowedExceptions[p.ImportPath+" "+dep] {
					t.Errorf("%s imports %s: data flows bpf → identity → tokencheck → agent", p.ImportPath, dep)
				}
			}
		}
	}
	// tokencheck must not depend on Kubernetes watchers or the datapath.
	out, err = exec.Command("go", "list", "-deps", module+"/tokencheck/...").Output()
	if err == nil {
		for _, dep := range strings.Fields(string(out)) {
			if strings.HasPrefix(dep, "k8s.io/client-go") || strings.HasPrefix(dep, "github.com/cilium/ebpf") {
				t.Errorf("tokencheck depends on %s", dep)
			}
		}
	}
}
