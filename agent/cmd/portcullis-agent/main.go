// Command portcullis-agent is the Portcullis node agent. It captures the
// inbound connections of the node's protected pods with eBPF, checks each
// request's Azure AD token and caller identity against the policies, and
// forwards or refuses it.
//
//	portcullis-agent --config /etc/portcullis/agent.yaml
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"runtime/debug"
	"strconv"
	"syscall"

	"github.com/portcullis-mesh/portcullis/agent/config"
	"github.com/portcullis-mesh/portcullis/agent/daemon"
)

func main() {
	os.Exit(run())
}

func run() int {
	fs := flag.NewFlagSet("portcullis-agent", flag.ContinueOnError)
	cfgPath := fs.String("config", "/etc/portcullis/agent.yaml", "agent configuration file (YAML)")
	logFormat := fs.String("log-format", "", "override log.format: json or text")
	logLevel := fs.String("log-level", "", "override log.level: debug, info, warn, error")
	version := fs.Bool("version", false, "print the version and exit")
	if err := fs.Parse(os.Args[1:]); err != nil {
		return 2
	}
	if *version {
		fmt.Println(daemon.Version)
		return 0
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		fmt.Fprintln(os.Stderr, "portcullis-agent:", err)
		return 2
	}
	if *logFormat != "" {
		cfg.Log.Format = *logFormat
	}
	if *logLevel != "" {
		cfg.Log.Level = *logLevel
	}
	if err := cfg.Validate(); err != nil {
		fmt.Fprintln(os.Stderr, "portcullis-agent:", err)
		return 2
	}
	log := newLogger(cfg.Log)
	if soft, ok, err := softMemoryLimit(os.Getenv); err != nil {
		fmt.Fprintln(os.Stderr, "portcullis-agent:", err)
		return 2
	} else if ok {
		debug.SetMemoryLimit(soft)
		log.Info("Go memory limit set", "container_limit_bytes", os.Getenv(memoryLimitEnv), "soft_limit_bytes", soft)
	}

	// SIGINT or SIGTERM stops the agent, at any point, and the exit is
	// clean (0). A second one kills it at once: the pins stay, so that too
	// fails closed.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	go func() { <-ctx.Done(); stop() }()
	if err := daemon.Run(ctx, cfg, log); err != nil {
		log.Error("agent failed", "error", err)
		return 1
	}
	return 0
}

// memoryLimitEnv names the container's memory limit in bytes, as the
// downward API gives it (resourceFieldRef limits.memory).
const memoryLimitEnv = "PORTCULLIS_MEMORY_LIMIT"

// softMemoryLimit returns the Go runtime's soft memory limit for the
// container's limit in memoryLimitEnv: 90% of it, leaving room for what the
// cgroup is charged besides Go's memory (the BPF maps the agent creates,
// socket buffers). ok is false when the variable is unset, or when
// GOMEMLIMIT is set: the runtime then uses that.
func softMemoryLimit(getenv func(string) string) (soft int64, ok bool, err error) {
	v := getenv(memoryLimitEnv)
	if v == "" || getenv("GOMEMLIMIT") != "" {
		return 0, false, nil
	}
	limit, err := strconv.ParseInt(v, 10, 64)
	if err != nil || limit <= 0 {
		return 0, false, fmt.Errorf("%s: %q is not a positive number of bytes", memoryLimitEnv, v)
	}
	return limit / 10 * 9, true, nil
}

func newLogger(c config.LogConfig) *slog.Logger {
	var level slog.Level
	_ = level.UnmarshalText([]byte(c.Level))
	opts := &slog.HandlerOptions{Level: level}
	if c.Format == "text" {
		return slog.New(slog.NewTextHandler(os.Stderr, opts))
	}
	return slog.New(slog.NewJSONHandler(os.Stderr, opts))
}
