package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mattn/go-isatty"
	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/portcullis-mesh/portcullis/agent/debugapi"
	"github.com/portcullis-mesh/portcullis/agent/debugapi/debugv1"
)

// Exit codes that scripts can rely on.
const (
	exitOK          = 0
	exitRefused     = 1 // a deny from explain, an invalid token, or any other failure
	exitUsage       = 2
	exitUnreachable = 3
	exitDegraded    = 4 // status: the agent is not ready or some pods are failing to enrol; workloads: some are
)

// socketEnv overrides the default socket path.
const socketEnv = "PORTCULLIS_SOCKET"

// stdio is the process's environment, replaced in tests.
type stdio struct {
	in     io.Reader
	out    io.Writer
	err    io.Writer
	getenv func(string) string
	now    func() time.Time
	// tty is true when out is a terminal: colour is on by default then.
	tty bool
}

func newIO(in io.Reader, out, errw io.Writer, getenv func(string) string) stdio {
	tty := false
	if f, ok := out.(*os.File); ok {
		tty = isatty.IsTerminal(f.Fd())
	}
	return stdio{in: in, out: out, err: errw, getenv: getenv, now: time.Now, tty: tty}
}

// app is the state shared by the subcommands of one invocation.
type app struct {
	stdio
	socket  string
	output  string
	color   string
	timeout time.Duration

	conn    *grpc.ClientConn
	dialMu  sync.Mutex
	dialErr error // last error of dialing the socket, for the hint
}

// exitError carries an exit code; a nil err means the command already said
// everything (e.g. explain printed a deny).
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit %d", e.code)
	}
	return e.err.Error()
}

func (e *exitError) Unwrap() error { return e.err }

func usageErrorf(format string, args ...any) error {
	return &exitError{code: exitUsage, err: fmt.Errorf(format, args...)}
}

// run executes the CLI with args and returns the process exit code.
func run(ctx context.Context, args []string, sio stdio) int {
	a := &app{stdio: sio}
	defer a.close()
	root := a.rootCmd()
	root.SetArgs(args)
	root.SetIn(sio.in)
	root.SetOut(sio.out)
	root.SetErr(sio.err)

	// Errors cobra returns before a command's RunE starts (unknown command
	// or flag, bad arguments, a missing required flag) are usage errors.
	started := false
	var wrap func(*cobra.Command)
	wrap = func(c *cobra.Command) {
		if r := c.RunE; r != nil {
			c.RunE = func(cmd *cobra.Command, args []string) error {
				started = true
				return r(cmd, args)
			}
		}
		for _, sub := range c.Commands() {
			wrap(sub)
		}
	}
	wrap(root)
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		switch a.output {
		case "table", "json", "yaml":
		default:
			return usageErrorf("output %q: want table, json or yaml", a.output)
		}
		switch a.color {
		case "auto", "always", "never":
		default:
			return usageErrorf("color %q: want auto, always or never", a.color)
		}
		return nil
	}
	cmd, err := root.ExecuteContextC(ctx)
	if err == nil {
		return exitOK
	}
	var ee *exitError
	switch {
	case errors.As(err, &ee):
	case !started:
		// cobra refused the arguments before any command ran: unknown
		// command or flag, wrong number of arguments.
		ee = &exitError{code: exitUsage, err: err}
	default:
		ee = a.classify(err)
	}
	if ee.err != nil {
		fmt.Fprintf(sio.err, "portcullis: %v\n", ee.err)
		if ee.code == exitUsage && cmd != nil {
			fmt.Fprintf(sio.err, "Run '%s --help' for usage.\n", cmd.CommandPath())
		}
	}
	return ee.code
}

// classify maps an error from a call to the agent to an exit code and the
// message the operator sees.
func (a *app) classify(err error) *exitError {
	st, ok := status.FromError(err)
	if !ok {
		return &exitError{code: exitRefused, err: err}
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded:
		return &exitError{code: exitUnreachable, err: errors.New(a.unreachableHint(st))}
	case codes.InvalidArgument:
		return &exitError{code: exitUsage, err: errors.New(st.Message())}
	case codes.Canceled:
		return &exitError{code: exitRefused, err: errors.New("canceled")}
	}
	return &exitError{code: exitRefused, err: fmt.Errorf("agent: %s", st.Message())}
}

// unreachableHint is the one line an operator needs when the agent cannot be
// reached: where we looked, what the kernel said, and what to check.
func (a *app) unreachableHint(st *status.Status) string {
	a.dialMu.Lock()
	derr := a.dialErr
	a.dialMu.Unlock()
	cause := "no answer within " + a.timeout.String()
	if st.Code() == codes.Unavailable {
		cause = st.Message()
	}
	if derr != nil {
		var errno syscall.Errno
		if errors.As(derr, &errno) {
			cause = errno.Error()
		} else {
			cause = derr.Error()
		}
	}
	hint := "is portcullis-agent running on this node?"
	if errors.Is(derr, syscall.EACCES) || errors.Is(derr, syscall.EPERM) {
		hint = "the socket is root only (mode 0600): run as root or with sudo"
	}
	return fmt.Sprintf("cannot reach the agent at %s (%s): %s (set --socket or %s for another path)", a.socket, cause, hint, socketEnv)
}

// client connects to the agent lazily; the first call reports a failure.
func (a *app) client() (debugv1.DebugClient, error) {
	if a.conn == nil {
		path := a.socket
		dial := func(ctx context.Context, _ string) (net.Conn, error) {
			var d net.Dialer
			c, err := d.DialContext(ctx, "unix", path)
			a.dialMu.Lock()
			a.dialErr = err
			a.dialMu.Unlock()
			return c, err
		}
		conn, err := grpc.NewClient("passthrough:///portcullis-agent",
			grpc.WithContextDialer(dial),
			grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return nil, fmt.Errorf("create client for %s: %w", path, err)
		}
		a.conn = conn
	}
	return debugv1.NewDebugClient(a.conn), nil
}

// callContext bounds one unary call by --timeout.
func (a *app) callContext(ctx context.Context) (context.Context, context.CancelFunc) {
	if a.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, a.timeout)
}

func (a *app) close() {
	if a.conn != nil {
		a.conn.Close()
	}
}

func (a *app) rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "portcullis",
		Short: "Inspect and debug Portcullis enforcement on this node",
		Long: `portcullis talks to the node's portcullis-agent over its debug socket and shows
what it enforces: workloads, policies, issuers, decisions and eBPF maps, and
explains why a request would be allowed or refused.

Exit codes: 0 ok, 1 refused (explain deny, invalid token) or other failure,
2 usage error, 3 agent unreachable, 4 degraded (status: the agent is not
ready or some workloads are failing to enrol; workloads: some are).`,
		SilenceErrors:     true,
		SilenceUsage:      true,
		CompletionOptions: cobra.CompletionOptions{DisableDefaultCmd: true},
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return &exitError{code: exitUsage, err: err}
	})
	def := a.getenv(socketEnv)
	if def == "" {
		def = debugapi.DefaultSocketPath
	}
	pf := root.PersistentFlags()
	pf.StringVar(&a.socket, "socket", def, "agent debug socket (env "+socketEnv+")")
	pf.StringVarP(&a.output, "output", "o", "table", "output format: table, json or yaml")
	pf.StringVar(&a.color, "color", "auto", "colour: auto (only on a terminal, unless NO_COLOR is set), always or never")
	pf.DurationVar(&a.timeout, "timeout", 10*time.Second, "how long to wait for the agent's answer")

	root.AddCommand(
		a.statusCmd(),
		a.workloadsCmd(),
		a.policiesCmd(),
		a.issuersCmd(),
		a.decisionsCmd(),
		a.explainCmd(),
		a.bpfCmd(),
		a.tokenCmd(),
		a.versionCmd(),
	)
	return root
}

// useColor reports whether output gets ANSI colours.
func (a *app) useColor() bool {
	switch a.color {
	case "always":
		return true
	case "never":
		return false
	}
	return a.tty && a.getenv("NO_COLOR") == "" && a.getenv("TERM") != "dumb"
}

// noArgs is cobra.NoArgs reported as a usage error.
func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("%s takes no arguments, got %q", cmd.CommandPath(), strings.Join(args, " "))
	}
	return nil
}
