package kubee2e

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/portcullis-mesh/portcullis/test/kubeenv"
)

// appEnv, when set, makes the test binary a pod's HTTP server instead of
// running tests; its value is the pod's name.
const appEnv = "PORTCULLIS_KUBEE2E_APP"

// appPort is the port the pods' servers listen on (captured by the tests'
// policies).
const appPort = 8080

func TestMain(m *testing.M) {
	if name := os.Getenv(appEnv); name != "" {
		os.Exit(runApp(name))
	}
	code := m.Run()
	if build.dir != "" {
		os.RemoveAll(build.dir)
	}
	os.Exit(code)
}

// echo is what the pods' server answers: who it is and what the verifier
// told it about the caller.
type echo struct {
	Name   string `json:"name"`
	Source string `json:"source"`
	Method string `json:"method"`
	Path   string `json:"path"`
}

// runApp serves every path on appPort with an echo, and says "ready" on
// standard output once it listens.
func runApp(name string) int {
	ln, err := net.Listen("tcp", fmt.Sprintf(":%d", appPort))
	if err != nil {
		fmt.Fprintf(os.Stderr, "listen: %v\n", err)
		return 1
	}
	fmt.Println("ready")
	err = http.Serve(ln, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(echo{Name: name, Source: r.Header.Get("X-Portcullis-Source"), Method: r.Method, Path: r.URL.Path})
	}))
	fmt.Fprintf(os.Stderr, "serve: %v\n", err)
	return 1
}

// build holds the agent binary, built once per run from this tree.
var build struct {
	once  sync.Once
	dir   string
	agent string
	err   error
}

// agentBinary builds portcullis-agent on first use.
func agentBinary(tb testing.TB) string {
	tb.Helper()
	build.once.Do(func() {
		root, err := kubeenv.RepoRoot()
		if err != nil {
			build.err = err
			return
		}
		if build.dir, err = os.MkdirTemp("", "kubee2e-bin-"); err != nil {
			build.err = err
			return
		}
		build.agent = filepath.Join(build.dir, "portcullis-agent")
		cmd := exec.Command("go", "build", "-o", build.agent, "./agent/cmd/portcullis-agent")
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			build.err = fmt.Errorf("build portcullis-agent: %w\n%s", err, out)
		}
	})
	if build.err != nil {
		tb.Fatal(build.err)
	}
	return build.agent
}
