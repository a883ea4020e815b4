package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/portcullis-mesh/portcullis/bpf/testenv"
	"github.com/portcullis-mesh/portcullis/tools/devidp/idp"
)

// TestMain runs the tests, or the e2e app when the binary is re-executed as
// a pod's process. The binaries and devidp are started lazily by the first
// test that needs them and stopped here.
func TestMain(m *testing.M) {
	if name := os.Getenv(appEnv); name != "" {
		os.Exit(runApp(name))
	}
	code := m.Run()
	shared.stop()
	os.Exit(code)
}

// binaries are the commands under test, built once per run from this tree.
type binaries struct {
	Agent, DevIDP, DemoApp string
}

// sharedState is what every test of a run shares: the built binaries and
// one devidp.
type sharedState struct {
	once    sync.Once
	err     error
	dir     string
	bins    binaries
	idpURL  string
	idpCmd  *exec.Cmd
	idpDone chan struct{}
}

var shared sharedState

// setup returns the binaries and devidp's URL, building and starting them
// on first use. Tests call it after RequirePrivileged.
func setup(t testing.TB) (binaries, string) {
	t.Helper()
	testenv.RequirePrivileged(t)
	shared.once.Do(func() { shared.err = shared.start() })
	if shared.err != nil {
		t.Fatalf("e2e setup: %v", shared.err)
	}
	return shared.bins, shared.idpURL
}

func (s *sharedState) start() error {
	dir, err := os.MkdirTemp("", "portcullis-e2e-bin-")
	if err != nil {
		return fmt.Errorf("create binary directory: %w", err)
	}
	s.dir = dir
	root, err := moduleRoot()
	if err != nil {
		return err
	}
	s.bins = binaries{
		Agent:   filepath.Join(dir, "portcullis-agent"),
		DevIDP:  filepath.Join(dir, "devidp"),
		DemoApp: filepath.Join(dir, "demoapp"),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	build := exec.CommandContext(ctx, "go", "build", "-o", dir+"/",
		"./agent/cmd/portcullis-agent", "./tools/devidp", "./tools/demoapp")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		return fmt.Errorf("go build: %w: %s", err, out)
	}
	return s.startIDP()
}

// startIDP runs devidp on a free loopback port and learns the port from
// its first line of output.
func (s *sharedState) startIDP() error {
	cmd := exec.Command(s.bins.DevIDP, "serve", "--listen", "127.0.0.1:0")
	out, err := cmd.StdoutPipe()
	if err != nil {
		return fmt.Errorf("devidp stdout: %w", err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start devidp: %w", err)
	}
	s.idpCmd = cmd
	s.idpDone = make(chan struct{})
	lines := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(out)
		if sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_, _ = io.Copy(io.Discard, out)
	}()
	go func() {
		_ = cmd.Wait()
		close(s.idpDone)
	}()
	select {
	case line, ok := <-lines:
		// "devidp: serving tenants ... at http://127.0.0.1:NNNN (use it ...)"
		_, after, found := strings.Cut(line, " at http://")
		addr, _, _ := strings.Cut(after, " ")
		if !ok || !found || addr == "" {
			return fmt.Errorf("devidp did not say where it listens (got %q); stderr: %s", line, stderr.String())
		}
		s.idpURL = "http://" + addr
	case <-time.After(10 * time.Second):
		return fmt.Errorf("devidp did not start within 10s; stderr: %s", stderr.String())
	}
	return nil
}

func (s *sharedState) stop() {
	if s.idpCmd != nil && s.idpCmd.Process != nil {
		_ = s.idpCmd.Process.Signal(os.Interrupt)
		select {
		case <-s.idpDone:
		case <-time.After(5 * time.Second):
			_ = s.idpCmd.Process.Kill()
			<-s.idpDone
		}
	}
	if s.dir != "" {
		os.RemoveAll(s.dir)
	}
}

// moduleRoot is the directory of go.mod.
func moduleRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("not inside the module")
	}
	return filepath.Dir(mod), nil
}

// mint asks devidp for an access token.
func mint(t testing.TB, req idp.TokenRequest) string {
	t.Helper()
	_, url := setup(t)
	b, err := json.Marshal(req)
	if err != nil {
		t.Fatalf("encode token request: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hr, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/devidp/token", bytes.NewReader(b))
	if err != nil {
		t.Fatalf("token request: %v", err)
	}
	hr.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(hr)
	if err != nil {
		t.Fatalf("mint token: %v", err)
	}
	defer resp.Body.Close()
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		t.Fatalf("mint token: %s: %s", resp.Status, body)
	}
	if err := json.NewDecoder(resp.Body).Decode(&tok); err != nil || tok.AccessToken == "" {
		t.Fatalf("mint token: decode answer: %v", err)
	}
	return tok.AccessToken
}
