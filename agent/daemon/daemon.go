// Package daemon runs the Portcullis agent: it opens (or re-adopts) the
// datapath, loads policies and issuers, follows the node's workloads,
// serves the admin endpoints and the debug API, and shuts down in the order
// the architecture's lifecycle section requires.
package daemon

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/portcullis-mesh/portcullis/agent/audit"
	"github.com/portcullis-mesh/portcullis/agent/authz"
	"github.com/portcullis-mesh/portcullis/agent/config"
	"github.com/portcullis-mesh/portcullis/agent/enforcer"
	"github.com/portcullis-mesh/portcullis/agent/metrics"
	"github.com/portcullis-mesh/portcullis/agent/verifier"
	"github.com/portcullis-mesh/portcullis/bpf"
	"github.com/portcullis-mesh/portcullis/identity"
	"github.com/portcullis-mesh/portcullis/identity/ipcache"
	"github.com/portcullis-mesh/portcullis/identity/localfile"
	"github.com/portcullis-mesh/portcullis/tokencheck"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
)

// Version is the agent's version, set at link time.
var Version = "devel"

// Agent is a running agent.
type Agent struct {
	cfg     *config.Config
	log     *slog.Logger
	started time.Time

	dp        *bpf.Datapath
	store     *policy.Store
	tokens    *tokencheck.Validator
	engine    *authz.Engine
	enforcer  *enforcer.Enforcer
	audit     *audit.Logger
	auditOut  io.Closer
	metrics   *metrics.Metrics
	ipc       *ipcache.Cache
	admin     *http.Server
	adminAddr net.Addr

	issuersMu sync.Mutex
	// policyErr, in kubernetes mode, is the error of the latest policy
	// snapshot (kubepolicy.Result.Err: the objects quarantined in the set
	// in force, or why the snapshot was refused); nil in local mode, where
	// the store's LastError says it all.
	policyErr atomic.Pointer[error]
	// policyInvalid counts the objects the set in force does not apply as
	// written (kubepolicy.Result.Invalid).
	policyInvalid atomic.Int64
}

// policyLastError is the policy problem status reports: the latest
// snapshot's in kubernetes mode, the store's in local mode.
func (a *Agent) policyLastError() error {
	if p := a.policyErr.Load(); p != nil {
		return *p
	}
	return a.store.Stats().LastError
}

// Run starts the agent and blocks until ctx ends, then shuts down. When ctx
// ends while the agent is still starting (a SIGTERM during a rollout), Run
// undoes what was started and returns nil: being told to stop is not a
// failure, whatever the start was waiting for.
func Run(ctx context.Context, cfg *config.Config, log *slog.Logger) error {
	a, err := Start(ctx, cfg, log)
	if err != nil {
		if ctx.Err() != nil {
			log.Info("agent stopped while starting", "cause", context.Cause(ctx), "start_error", err)
			return nil
		}
		return err
	}
	<-ctx.Done()
	return a.Shutdown()
}

// Start brings the agent up and returns once it is serving; workloads and
// policies keep being followed until ctx ends.
func Start(ctx context.Context, cfg *config.Config, log *slog.Logger) (_ *Agent, err error) {
	a := &Agent{cfg: cfg, log: log, started: time.Now(), ipc: &ipcache.Cache{}}
	defer func() {
		if err != nil {
			a.closeAll()
		}
	}()
	a.metrics = metrics.New(metrics.BuildInfo{Version: Version})

	// Audit first: every decision from the first request on is recorded.
	w := io.Writer(os.Stdout)
	if cfg.Audit.Path != "-" {
		f, err := os.OpenFile(cfg.Audit.Path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o640)
		if err != nil {
			return nil, fmt.Errorf("open audit log: %w", err)
		}
		w, a.auditOut = f, f
	}
	// Records are batched for up to 20ms: one write(2) per batch instead of
	// one per request (profiling showed per-record writes at 8% of the
	// agent's CPU under load). Shutdown flushes.
	a.audit = audit.New(audit.Config{Writer: w, BufferSize: cfg.Audit.Buffer, AllowSampling: cfg.Audit.AllowSampling(), FlushInterval: 20 * time.Millisecond, Logger: log})
	if err := a.metrics.RegisterAuditDrops(func() (uint64, uint64, uint64) {
		s := a.audit.Stats()
		return s.DroppedAllows, s.DroppedDenies, s.SubscriberDrops
	}); err != nil {
		return nil, fmt.Errorf("register audit metrics: %w", err)
	}

	// The datapath: re-adopt what a previous agent pinned, so enforcement
	// never lapses across restarts.
	// The acceleration mark is set whatever the node's default, so that a
	// workload can opt in at run time; a mark no socket carries costs next
	// to nothing (config.AccelerationConfig).
	// In a container, a bpffs the datapath mounted itself would vanish with
	// the container, and every restart would open the pods: refuse.
	if cfg.Mode == config.ModeKubernetes {
		if err := checkPinFS(cfg.PinDir); err != nil {
			return nil, err
		}
	}
	// The datapath's interface watchers report pods whose capture broke
	// (an interface that appeared and could not be captured) to the
	// enforcer, which counts them as failing and retries; it is created
	// after the datapath, and reports only come after it enrols a pod.
	var enf atomic.Pointer[enforcer.Enforcer]
	a.dp, err = bpf.Open(bpf.Config{
		PinDir:       cfg.PinDir,
		CgroupRoot:   cfg.CgroupRoot,
		ListenerPort: uint16(cfg.ListenerPort),
		AccelMark:    cfg.LocalAcceleration.Mark,
		OnError: func(key string, err error) {
			if e := enf.Load(); e != nil {
				e.DatapathError(key, err)
				return
			}
			log.Warn("datapath error before the enforcer started", "workload", key, "error", err)
		},
	})
	if err != nil {
		return nil, fmt.Errorf("open datapath: %w", err)
	}

	a.tokens, err = tokencheck.New(tokencheck.Config{
		CacheEntries: cfg.Tokens.CacheEntries,
		MaxStaleness: cfg.Tokens.MaxStaleness.Duration,
		FetchTimeout: cfg.Tokens.FetchTimeout.Duration,
		Logger:       log.With("component", "tokencheck"),
	}, nil)
	if err != nil {
		return nil, fmt.Errorf("token validator: %w", err)
	}
	a.store = policy.NewStore()
	a.engine = authz.New(a.tokens, a.store)
	a.enforcer, err = enforcer.New(enforcer.Config{
		Datapath:    a.dp,
		Engine:      a.engine,
		TrustDomain: cfg.TrustDomain,
		IPCache:     a.ipc,
		Verifier: verifier.Config{
			PassthroughPorts:  ports16(cfg.Limits.PassthroughPorts),
			MaxHeaderBytes:    cfg.Limits.MaxHeaderBytes,
			MaxHeaderCount:    cfg.Limits.MaxHeaders,
			ReadHeaderTimeout: cfg.Limits.HeaderTimeout.Duration,
			IdleTimeout:       cfg.Limits.IdleTimeout.Duration,
			StreamIdleTimeout: cfg.Limits.StreamIdleTimeout.Duration,
			MaxConns:          cfg.Limits.MaxConnsPerPod,
			Budget:            verifier.NewConnBudget(cmp.Or(cfg.Limits.MaxConns, config.DefaultMaxConns)),
		},
		LocalAcceleration: cfg.LocalAcceleration.Enabled,
		KeepPreexisting:   cfg.KeepPreexistingConnections,
		ShutdownGrace:     cfg.ShutdownGrace.Duration,
		Audit:             a.audit,
		Metrics:           a.metrics,
		Logger:            log.With("component", "enforcer"),
	})
	if err != nil {
		return nil, err
	}
	enf.Store(a.enforcer)
	if err := a.registerCollectors(); err != nil {
		return nil, err
	}

	// The debug API first, so it answers from the moment /readyz can say
	// ready; it copes with no policy set and no workloads yet.
	if err := a.startDebug(ctx); err != nil {
		return nil, err
	}
	if err := a.startAdmin(); err != nil {
		return nil, err
	}
	switch cfg.Mode {
	case config.ModeLocal:
		if err := a.startLocal(ctx); err != nil {
			return nil, err
		}
	case config.ModeKubernetes:
		if err := a.startKubernetes(ctx); err != nil {
			return nil, err
		}
	}
	admin := "off"
	if a.adminAddr != nil {
		admin = a.adminAddr.String()
	}
	log.Info("agent started", "version", Version, "mode", cfg.Mode, "node", cfg.NodeName,
		"pin_dir", a.dp.PinDir(), "listener_port", a.dp.ListenerPort(), "admin", admin)
	return a, nil
}

// applySet makes a newly compiled policy set effective everywhere: the
// issuers it references are (re)configured first, then capture follows.
func (a *Agent) applySet(set *policy.Set) {
	a.issuersMu.Lock()
	defer a.issuersMu.Unlock()
	if err := a.tokens.SetIssuers(set.IssuerConfigs()); err != nil {
		a.log.Error("configure issuers", "error", err)
	}
	a.enforcer.PolicyChanged()
	st := a.store.Stats()
	a.log.Info("policy set applied", "generation", st.Generation, "policies", st.Policies, "rules", st.Rules,
		"compile_seconds", st.CompileDuration.Seconds())
}

func (a *Agent) startLocal(ctx context.Context) error {
	watcher, err := policy.NewWatcher(policy.WatcherConfig{
		Paths:  []string{a.cfg.Local.Policies},
		Store:  a.store,
		Logger: a.log.With("component", "policy"),
		OnReload: func(set *policy.Set, err error) {
			if err == nil { // the watcher logs refusals
				a.applySet(set)
			}
		},
	})
	if err != nil {
		return fmt.Errorf("watch policies: %w", err)
	}
	// The first set is applied before workloads are followed; Run then
	// reloads only on change.
	if err := watcher.Load(); err != nil {
		return err
	}
	go func() {
		if err := watcher.Run(ctx); err != nil {
			a.log.Error("policy watcher stopped", "error", err)
		}
	}()

	src := localfile.New(a.cfg.Local.Workloads, 0, a.log.With("component", "workloads"))
	return a.followWorkloads(ctx, src.Run)
}

// followWorkloads runs a workload source, feeding the enforcer, and returns
// once the source has reported every workload that existed when it started
// (EventSynced), or with the source's error if it ends before that.
func (a *Agent) followWorkloads(ctx context.Context, run func(context.Context, identity.Handler) error) error {
	errc := make(chan error, 1)
	synced := make(chan struct{})
	var once sync.Once
	go func() {
		errc <- run(ctx, func(ev identity.Event) {
			a.enforcer.Handle(ev)
			if ev.Type == identity.EventSynced {
				once.Do(func() { close(synced) })
			}
		})
	}()
	select {
	case <-synced:
		go func() {
			if err := <-errc; err != nil {
				a.log.Error("workload source stopped", "error", err)
			}
		}()
		return nil
	case err := <-errc:
		if err == nil {
			err = errors.New("workload source ended before its first sync")
		}
		return fmt.Errorf("workloads: %w", err)
	case <-ctx.Done():
		return ctx.Err()
	}
}

func ports16(ps []int) []uint16 {
	out := make([]uint16, 0, len(ps))
	for _, p := range ps {
		out = append(out, uint16(p))
	}
	return out
}

// Ready reports whether the agent enforces: the datapath is open, the
// workload source has synced, a policy set is in force, and every issuer has
// keys or is reported failing.
func (a *Agent) Ready() error {
	if a.dp == nil {
		return errors.New("datapath not open")
	}
	if !a.enforcer.Synced() {
		return errors.New("workloads not synced")
	}
	if a.engine.Set() == nil {
		return errors.New("no policy set")
	}
	for _, is := range a.tokens.Issuers() {
		for _, s := range is.Sources {
			if !s.HasKeys && s.LastError == "" {
				return fmt.Errorf("issuer %s: keys not fetched yet", is.Ref)
			}
		}
	}
	return nil
}

func (a *Agent) startAdmin() error {
	if a.cfg.AdminAddress == "off" {
		return nil
	}
	mux := http.NewServeMux()
	// Liveness: the enforcer still answers (see enforcerStallLimit).
	health := &watchdog{probe: func() { a.enforcer.Synced() }, progress: a.enforcer.Progress, limit: enforcerStallLimit, now: time.Now}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		if err := health.check(); err != nil {
			http.Error(w, "unhealthy: enforcer: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if err := a.Ready(); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ready\n")
	})
	mux.Handle("GET /metrics", a.metrics.Handler())
	if a.cfg.Profiling {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	ln, err := net.Listen("tcp", a.cfg.AdminAddress)
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	a.adminAddr = ln.Addr()
	a.admin = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := a.admin.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			a.log.Error("admin server stopped", "error", err)
		}
	}()
	return nil
}

// AdminAddr is the admin endpoint's address (nil when off).
func (a *Agent) AdminAddr() net.Addr { return a.adminAddr }

// Shutdown drains verifiers within the configured grace, flushes the audit
// log and releases the datapath: pins stay (fail closed until the next
// agent) unless teardownOnExit is set.
func (a *Agent) Shutdown() error {
	a.log.Info("agent shutting down", "grace", a.cfg.ShutdownGrace.Duration)
	ctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownGrace.Duration)
	defer cancel()
	if a.enforcer != nil {
		_ = a.enforcer.Close(ctx)
	}
	return a.closeAll()
}

func (a *Agent) closeAll() error {
	var errs []error
	if a.admin != nil {
		_ = a.admin.Close()
	}
	if a.dp != nil {
		if a.cfg.TeardownOnExit {
			errs = append(errs, a.dp.Teardown())
		} else {
			errs = append(errs, a.dp.Close())
		}
	}
	if a.tokens != nil {
		_ = a.tokens.Close()
	}
	if a.audit != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		errs = append(errs, a.audit.Close(ctx))
		cancel()
	}
	if a.auditOut != nil {
		errs = append(errs, a.auditOut.Close())
	}
	return errors.Join(errs...)
}
