// Command portcullis is the node debug CLI of Portcullis. It talks to the
// local portcullis-agent over its debug API (a root-only Unix socket) and
// shows what the node enforces: enrolled workloads, live policies and
// issuers, recent and live decisions, the eBPF maps, and why a given request
// would be allowed or refused (explain, also offline against policy files).
//
// Exit codes: 0 success, 1 refused (an explain that denies, an invalid token)
// or any other failure, 2 usage error, 3 agent unreachable.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], newIO(os.Stdin, os.Stdout, os.Stderr, os.Getenv))
	stop()
	os.Exit(code)
}
