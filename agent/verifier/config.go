package verifier

import (
	"errors"
	"log/slog"
	"time"

	"github.com/portcullis-mesh/portcullis/agent/audit"
	"github.com/portcullis-mesh/portcullis/agent/metrics"
)

// Config configures a Server. Only Authorizer is required.
type Config struct {
	// Workload is the destination pod ("namespace/name"), passed to the
	// authorizers and recorded in audit records. Empty is allowed (tests).
	Workload string
	// Authorizer decides HTTP requests. Required.
	Authorizer Authorizer
	// L4Authorizer decides connections on PassthroughPorts. Nil means every
	// passthrough connection is refused.
	L4Authorizer L4Authorizer
	// Sources resolves the caller of each connection. Nil means every caller
	// is identity.AnonymousSource.
	Sources SourceResolver
	// Dialer dials the application. Nil means a net.Dialer in the agent's
	// own network namespace, which is only right for tests.
	Dialer Dialer
	// PassthroughPorts are destination ports whose bytes are not HTTP (or
	// are TLS to the application): they get an L4 decision and are spliced.
	// Nil means none.
	PassthroughPorts []uint16
	// StripHeaders are header names removed from every request before
	// forwarding, in addition to X-Portcullis-* and the forwarding headers
	// (see the package doc): the forwardClaims header names. Nil means none.
	// SetStripHeaders replaces them at run time.
	StripHeaders []string
	// MaxHeaderBytes bounds the request line plus header block. Zero means
	// 32 KiB (Entra tokens with many groups run to several KiB).
	MaxHeaderBytes int
	// MaxHeaderCount bounds the number of header fields. Zero means 128.
	MaxHeaderCount int
	// ReadHeaderTimeout bounds the time from the first byte of a request
	// (or the connection's start) to the end of its header block, against
	// slowloris. Zero means 10s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes a keep-alive connection that sends no new request
	// for this long (for 15/16 of it at least: the deadline of a busy
	// connection is moved in steps of IdleTimeout/16). Zero means 120s.
	IdleTimeout time.Duration
	// StreamIdleTimeout closes both connections of an exchange whose
	// request body, response body or upgraded tunnel (WebSocket) moved no
	// byte in either direction for this long (for at most 1¼ of it:
	// progress is looked at every StreamIdleTimeout/4), against clients
	// and applications that stall mid-stream. A stream moving steadily
	// one way, however slowly, is never cut. The wait for a response head
	// once the request body is sent is not covered (long polls:
	// ResponseHeaderTimeout), nor are passthrough ports. On HTTP/2 it
	// resets the stream, not the connection. Zero means 5m; negative means
	// no limit.
	StreamIdleTimeout time.Duration
	// MaxConns bounds concurrent connections served for the pod; more are
	// closed on accept and counted. Zero means 4096.
	MaxConns int
	// Budget, when not nil, is a bound shared with other Servers (every
	// pod of the node): a connection is served only if it fits both
	// MaxConns and Budget, or the pod's BudgetReserve. Nil means no shared
	// bound.
	Budget *ConnBudget
	// BudgetReserve is how many of the pod's connections never draw on
	// Budget, so that other pods exhausting it cannot lock this one out.
	// Zero means DefaultBudgetReserve; negative means none.
	BudgetReserve int
	// NoSplice moves every byte through user space, never with splice(2)
	// (bodies of 64 KiB and more, upgraded and passthrough connections).
	// Required when the Dialer's connections are locally accelerated
	// (bpf.Config.AccelMark): bytes redirected into a socket through a
	// sockmap are invisible to splice(2) on it. Zero: splice.
	NoSplice bool
	// DialTimeout bounds dialing the application. Zero means 5s.
	DialTimeout time.Duration
	// ResponseHeaderTimeout bounds the wait for the application's response
	// headers. Zero means no limit (long polls are the application's
	// business).
	ResponseHeaderTimeout time.Duration
	// MaxIdleUpstreamConns bounds idle HTTP/1.1 connections kept per
	// destination. Zero means 64; negative disables pooling.
	MaxIdleUpstreamConns int
	// UpstreamIdleTimeout drops pooled connections idle for longer. Zero
	// means 60s; keep it below the application's own keep-alive timeout.
	UpstreamIdleTimeout time.Duration
	// MaxConcurrentStreams bounds HTTP/2 streams per client connection.
	// Zero means 250.
	MaxConcurrentStreams uint32
	// Audit receives one record per decision. Nil means no audit.
	Audit Auditor
	// Metrics receives request and connection metrics. Nil means none.
	Metrics *metrics.Metrics
	// Logger reports connection-level problems at debug level and internal
	// errors at warn level. Nil means slog.DiscardHandler.
	Logger *slog.Logger
}

// Auditor receives audit records. *audit.Logger satisfies it. Log must not
// retain r.
type Auditor interface {
	Log(r *audit.Record)
}

func (c *Config) setDefaults() error {
	if c.Authorizer == nil {
		return errors.New("verifier config: Authorizer is required")
	}
	if c.MaxHeaderBytes <= 0 {
		c.MaxHeaderBytes = 32 << 10
	}
	if c.MaxHeaderCount <= 0 {
		c.MaxHeaderCount = 128
	}
	if c.ReadHeaderTimeout <= 0 {
		c.ReadHeaderTimeout = 10 * time.Second
	}
	if c.IdleTimeout <= 0 {
		c.IdleTimeout = 120 * time.Second
	}
	if c.StreamIdleTimeout == 0 {
		c.StreamIdleTimeout = 5 * time.Minute
	}
	if c.MaxConns <= 0 {
		c.MaxConns = 4096
	}
	switch {
	case c.BudgetReserve == 0:
		c.BudgetReserve = DefaultBudgetReserve
	case c.BudgetReserve < 0:
		c.BudgetReserve = 0
	}
	if c.DialTimeout <= 0 {
		c.DialTimeout = 5 * time.Second
	}
	if c.MaxIdleUpstreamConns == 0 {
		c.MaxIdleUpstreamConns = 64
	}
	if c.UpstreamIdleTimeout <= 0 {
		c.UpstreamIdleTimeout = 60 * time.Second
	}
	if c.MaxConcurrentStreams == 0 {
		c.MaxConcurrentStreams = 250
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}
