package e2e

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite testdata/cli/*.golden with the current output")

// cliVersion is the version linked into the CLI under test, so that
// `portcullis version` has a stable client line.
const cliVersion = "v0.0.0-e2e"

// cliBuild builds tools/portcullis once per run, next to the harness's
// binaries (removed by TestMain).
var cliBuild struct {
	once sync.Once
	path string
	err  error
}

// portcullisBin returns the path of the CLI built from this tree.
func portcullisBin(t testing.TB) string {
	t.Helper()
	bins, _ := setup(t)
	cliBuild.once.Do(func() {
		root, err := moduleRoot()
		if err != nil {
			cliBuild.err = err
			return
		}
		out := filepath.Join(filepath.Dir(bins.Agent), "portcullis")
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		build := exec.CommandContext(ctx, "go", "build", "-o", out,
			"-ldflags", "-X main.version="+cliVersion, "./tools/portcullis")
		build.Dir = root
		if b, err := build.CombinedOutput(); err != nil {
			cliBuild.err = fmt.Errorf("go build ./tools/portcullis: %w: %s", err, b)
			return
		}
		cliBuild.path = out
	})
	if cliBuild.err != nil {
		t.Fatalf("e2e setup: %v", cliBuild.err)
	}
	return cliBuild.path
}

// cliResult is what one run of the CLI did.
type cliResult struct {
	Code           int
	Stdout, Stderr string
}

// cli runs the portcullis binary against one agent's socket.
type cli struct {
	bin    string
	socket string
	// cred, when set, runs the CLI as that user.
	cred *syscall.Credential
}

// newCLI is the CLI pointed at e's agent socket (--socket, as the agent
// config the harness writes names it). The agent must be started: newCLI
// waits for the socket.
func newCLI(t testing.TB, e *env) *cli {
	t.Helper()
	c := &cli{bin: portcullisBin(t), socket: filepath.Join(e.dir, "debug.sock")}
	c.waitSocket(t)
	return c
}

// waitSocket waits until the agent has created its debug socket. The agent
// says it is ready (/readyz) before it opens the socket, and there is no
// other signal, so this polls within waitTimeout.
func (c *cli) waitSocket(t testing.TB) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		_, err := os.Lstat(c.socket)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("debug socket not there %v after the agent was ready: %v", waitTimeout, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// run runs the CLI with args after --socket and waits for it, within
// waitTimeout. A CLI that cannot be started or does not exit fails the
// test; any exit code is a result.
func (c *cli) run(t testing.TB, stdin string, args ...string) cliResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, c.bin, append([]string{"--socket", c.socket}, args...)...)
	cmd.Env = c.environ()
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	err := cmd.Run()
	res := cliResult{Stdout: out.String(), Stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case ctx.Err() != nil:
		t.Fatalf("portcullis %s: no exit within %v; stdout %q, stderr %q", strings.Join(args, " "), waitTimeout, res.Stdout, res.Stderr)
	case errors.As(err, &ee) && ee.Exited():
		res.Code = ee.ExitCode()
	default:
		t.Fatalf("portcullis %s: %v; stderr %q", strings.Join(args, " "), err, res.Stderr)
	}
	return res
}

// environ is the test's environment without anything that changes the
// CLI's output: no colour, no socket override.
func (c *cli) environ() []string {
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool {
		return strings.HasPrefix(kv, "PORTCULLIS_SOCKET=") || strings.HasPrefix(kv, "NO_COLOR=")
	})
	return append(env, "NO_COLOR=1")
}

// normaliser turns one run's output into what a golden file holds: the
// values only this run has (paths with random suffixes, addresses of a
// random subnet, key IDs, the devidp port) become named placeholders, and
// clocks become $TIME and $DUR.
type normaliser struct {
	// literal replacements, applied longest first.
	literal map[string]string
	// numbers replaced as whole words, after the clocks (a number could
	// be part of a time).
	numbers map[uint64]string
}

func newNormaliser() *normaliser {
	return &normaliser{literal: map[string]string{}, numbers: map[uint64]string{}}
}

// setNumber says that the number v, as a whole word, is written as
// placeholder.
func (n *normaliser) setNumber(v uint64, placeholder string) { n.numbers[v] = placeholder }

// set says that value, wherever it appears, is written as placeholder.
func (n *normaliser) set(value, placeholder string) {
	if value != "" {
		n.literal[value] = placeholder
	}
}

// The patterns, in order; each says what only a clock can know.
var cliPatterns = []struct {
	re   *regexp.Regexp
	repl string
}{
	// RFC 3339 times (tables, JSON, token claims).
	{regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)`), "$$TIME"},
	// protojson durations ("93.5s" in JSON, 93.5s in YAML).
	{regexp.MustCompile(`-?\b\d+\.\d+s\b`), "$$DUR"},
	// The CLI's ages: "12m", "1h5m", "3d2h", "0s", "in 48m", "30s ago".
	{regexp.MustCompile(`\b(\d+[dhms])+\b`), "$$DUR"},
	// Unix times of token claims (exp, iat, nbf: ten digits).
	{regexp.MustCompile(`\b1\d{9}\b`), "$$UNIX"},
	// The agent's VCS revision.
	{regexp.MustCompile(`\b[0-9a-f]{40}\b`), "$$COMMIT"},
}

// padding is a run of table padding after a cell: tabwriter pads to the
// widest cell, and the widest cell is often a replaced value. Indentation
// (JSON, claims) is kept.
var padding = regexp.MustCompile(`(\S) {2,}`)

// apply normalises s.
func (n *normaliser) apply(s string) string {
	keys := make([]string, 0, len(n.literal))
	for k := range n.literal {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int { return len(b) - len(a) })
	for _, k := range keys {
		s = strings.ReplaceAll(s, k, n.literal[k])
	}
	for _, p := range cliPatterns {
		s = p.re.ReplaceAllString(s, p.repl)
	}
	for v, placeholder := range n.numbers {
		re := regexp.MustCompile(`\b` + strconv.FormatUint(v, 10) + `\b`)
		s = re.ReplaceAllLiteralString(s, placeholder)
	}
	return padding.ReplaceAllString(s, "$1  ")
}

// golden compares a normalised result with testdata/cli/<name>.golden, or
// rewrites the file with -update.
func golden(t *testing.T, name string, n *normaliser, r cliResult) {
	t.Helper()
	got := fmt.Sprintf("exit: %d\n", r.Code)
	if r.Stdout != "" {
		got += "--- stdout\n" + n.apply(r.Stdout)
	}
	if r.Stderr != "" {
		got += "--- stderr\n" + n.apply(r.Stderr)
	}
	path := filepath.Join("testdata", "cli", name+".golden")
	if *update {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatalf("update %s: %v", path, err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run with -update to create it): %v", err)
	}
	if diff := cmp.Diff(string(want), got); diff != "" {
		t.Errorf("%s (-want +got):\n%s", path, diff)
	}
}
