// Package config is the agent's one typed configuration: a YAML file and
// flags are decoded into Config, defaults are applied in one place, and
// Validate says precisely what is wrong. Everything else takes its settings
// from a Config; nothing re-reads flags or the environment.
package config

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"net"
	"os"
	"strconv"
	"time"

	"sigs.k8s.io/yaml"
)

// Mode says where workloads and policies come from.
type Mode string

const (
	// ModeLocal reads workloads, issuers and policies from files (the demo,
	// tests, and nodes without a cluster).
	ModeLocal Mode = "local"
	// ModeKubernetes watches the API server (the DaemonSet).
	ModeKubernetes Mode = "kubernetes"
)

// Config is the agent's configuration. Every field documents its zero value.
type Config struct {
	// Mode is local or kubernetes. Zero: local.
	Mode Mode `json:"mode,omitempty"`
	// NodeName names this node. Zero: $NODE_NAME (the DaemonSet sets it from
	// the downward API's spec.nodeName), else the host name.
	NodeName string `json:"nodeName,omitempty"`
	// TrustDomain is the SPIFFE trust domain of workload identities. Zero:
	// cluster.local.
	TrustDomain string `json:"trustDomain,omitempty"`
	// AdminAddress serves /healthz, /readyz and /metrics, away from the data
	// path. Zero: 127.0.0.1:9901. "off" disables it.
	AdminAddress string `json:"adminAddress,omitempty"`
	// DebugSocket is the Unix socket of the gRPC debug API (mode 0600).
	// Zero: /var/run/portcullis/debug.sock. "off" disables it.
	DebugSocket string `json:"debugSocket,omitempty"`
	// ListenerPort is the port of the agent's listener inside each enrolled
	// pod's network namespace; it is never captured. Zero: 15006.
	ListenerPort int `json:"listenerPort,omitempty"`
	// PinDir is where the datapath pins programs, maps and links so that
	// enforcement survives an agent restart. Zero: /sys/fs/bpf/portcullis/agent.
	PinDir string `json:"pinDir,omitempty"`
	// CgroupRoot is the cgroup v2 mount. Zero: detected.
	CgroupRoot string `json:"cgroupRoot,omitempty"`
	// ShutdownGrace bounds how long in-flight requests may finish on
	// shutdown. Zero: 20s.
	ShutdownGrace Duration `json:"shutdownGrace,omitempty"`
	// TeardownOnExit removes the datapath on shutdown instead of leaving it
	// pinned. Zero: false — the datapath stays and keeps captured ports
	// closed (fail closed) until an agent re-adopts it.
	TeardownOnExit bool `json:"teardownOnExit,omitempty"`
	// KeepPreexistingConnections leaves alone the connections an
	// application accepted before capture covered their port. Zero: false —
	// they are reset when capture starts, so none goes on unchecked.
	KeepPreexistingConnections bool `json:"keepPreexistingConnections,omitempty"`

	// LocalAcceleration moves the bytes between the agent and the
	// applications it forwards to through a sockmap instead of TCP/IP over
	// each pod's loopback: the node's default, which each workload may
	// override. Zero: off unless a workload asks for it.
	LocalAcceleration AccelerationConfig `json:"localAcceleration,omitempty"`

	// Profiling serves net/http/pprof under /debug/pprof/ on AdminAddress.
	// Zero: off.
	Profiling bool `json:"profiling,omitempty"`

	// Tokens tunes token validation.
	Tokens TokensConfig `json:"tokens,omitempty"`
	// Local configures ModeLocal.
	Local LocalConfig `json:"local,omitempty"`
	// Kubernetes configures ModeKubernetes.
	Kubernetes KubernetesConfig `json:"kubernetes,omitempty"`
	// Audit configures the decision log.
	Audit AuditConfig `json:"audit,omitempty"`
	// Limits bound what one client can make the verifier hold.
	Limits LimitsConfig `json:"limits,omitempty"`
	// Log configures the agent's own logs.
	Log LogConfig `json:"log,omitempty"`
}

// AccelerationConfig configures local acceleration (docs/architecture.md,
// "Local acceleration"). Whether a workload is accelerated is its own
// choice when it states one (the pod annotation
// portcullis.dev/local-acceleration: "true" or "false", or
// localAcceleration in a workloads file), else Enabled. A change of either
// takes effect at run time, for new connections.
type AccelerationConfig struct {
	// Enabled is the default for workloads that state no choice. Bytes
	// redirected through a sockmap are invisible to splice(2) on the
	// receiving socket: an application that reads its sockets with
	// splice(2) (some proxies do) stalls when accelerated. Zero: false,
	// only workloads that ask for it are accelerated.
	Enabled bool `json:"enabled,omitempty"`
	// Mark is the SO_MARK the agent sets on its sockets to accelerated
	// applications, by which the datapath knows them; they also carry it
	// on the wire of the pod's loopback. The datapath watches for it even
	// when no workload is accelerated, so that one can opt in without a
	// restart: while no socket carries it, the cost is a comparison per
	// outgoing and a lookup in an empty hash per incoming TCP connection
	// on the node, and nothing per message. Zero: 0x5043 ("PC"). Change it
	// if the pod network gives that fwmark a meaning.
	Mark uint32 `json:"mark,omitempty"`
}

// DefaultMaxConns is LimitsConfig.MaxConns's default: about 180 MiB of
// idle connections, within the DaemonSet's 512Mi memory limit.
const DefaultMaxConns = 8192

// DefaultAccelerationMark is AccelerationConfig.Mark's default.
const DefaultAccelerationMark = 0x5043

// LocalConfig names the files of local mode. Relative paths are resolved
// against the config file's directory.
type LocalConfig struct {
	// Workloads is a YAML file of workloads (pods) on this node. Required in
	// local mode.
	Workloads string `json:"workloads,omitempty"`
	// Policies is a file or directory of Issuer, ClusterIssuer and
	// AccessPolicy YAML documents, watched for changes. Required in local mode.
	Policies string `json:"policies,omitempty"`
}

// KubernetesConfig configures ModeKubernetes.
type KubernetesConfig struct {
	// Kubeconfig is a kubeconfig path. Zero: in-cluster configuration.
	Kubeconfig string `json:"kubeconfig,omitempty"`
	// PodName and PodNamespace name the agent's own pod, which is never
	// captured. Zero: from POD_NAME / POD_NAMESPACE.
	PodName      string `json:"podName,omitempty"`
	PodNamespace string `json:"podNamespace,omitempty"`
	// RestrictNamespacedIssuers refuses, on a namespaced Issuer,
	// azureAD.authorityHost, oidc.jwksURI and http (loopback) oidc.issuer
	// URLs: only a ClusterIssuer (written by cluster administrators) may
	// then choose where the agent fetches discovery documents and keys
	// from, and whoever may create an Issuer in one namespace cannot point
	// the node at services reachable from it. An Issuer refused for this
	// is quarantined like any invalid one. Zero: allowed on every Issuer.
	RestrictNamespacedIssuers bool `json:"restrictNamespacedIssuers,omitempty"`
}

// AuditConfig configures the decision log.
type AuditConfig struct {
	// Path is the file audit records are appended to; "-" is standard
	// output. Zero: standard output.
	Path string `json:"path,omitempty"`
	// AllowSampleRate is the fraction of allow decisions recorded: 1/N
	// for a whole N (1, 0.5, 0.25, 0.1, 0.01...), since one allow in every
	// N is recorded; Validate refuses a rate more than 0.5% away from the
	// nearest 1/N, which would silently record another fraction. 0 records
	// no allow. Denies are always recorded. Unset: 1, every allow.
	AllowSampleRate *float64 `json:"allowSampleRate,omitempty"`
	// Buffer is how many records may wait to be written. Zero: 4096.
	Buffer int `json:"buffer,omitempty"`
}

// TokensConfig tunes token validation. Zero values take tokencheck's
// defaults.
type TokensConfig struct {
	// CacheEntries bounds the verified-token cache; negative disables it.
	// Zero: 10000.
	CacheEntries int `json:"cacheEntries,omitempty"`
	// MaxStaleness is how long an issuer's last good key set keeps being
	// used while its IdP cannot be reached. Zero: 24h.
	MaxStaleness Duration `json:"maxStaleness,omitempty"`
	// FetchTimeout bounds one discovery+keys refresh. Zero: 5s.
	FetchTimeout Duration `json:"fetchTimeout,omitempty"`
}

// LimitsConfig bounds client resources. Zero values take the verifier's
// defaults.
type LimitsConfig struct {
	// MaxHeaderBytes bounds a request's header block. Zero: 32 KiB.
	MaxHeaderBytes int `json:"maxHeaderBytes,omitempty"`
	// MaxHeaders bounds the number of header fields. Zero: 128.
	MaxHeaders int `json:"maxHeaders,omitempty"`
	// HeaderTimeout bounds reading a request's header (slowloris). Zero: 10s.
	HeaderTimeout Duration `json:"headerTimeout,omitempty"`
	// IdleTimeout closes keep-alive connections idle this long. Zero: 120s.
	IdleTimeout Duration `json:"idleTimeout,omitempty"`
	// StreamIdleTimeout closes a request whose body, response body or
	// upgraded tunnel (WebSocket) moved no byte in either direction this
	// long (slowloris after the header, stalled applications); HTTP/2
	// streams are reset. Steady streams, however slow, are never cut; the
	// wait for a response head (long polls) and passthrough ports are not
	// covered. Zero: 5m. There is no "off": raise it (e.g. 24h) for
	// long-lived streams that may stay silent longer.
	StreamIdleTimeout Duration `json:"streamIdleTimeout,omitempty"`
	// MaxConnsPerPod bounds concurrent client connections per pod. Zero: 4096.
	MaxConnsPerPod int `json:"maxConnsPerPod,omitempty"`
	// MaxConns bounds concurrent client connections of all the node's pods
	// together, so that the pods together cannot make the agent hold more
	// memory than it has (about 22 KiB per idle connection). Each pod's
	// first 32 connections (verifier.DefaultBudgetReserve) do not count, so
	// that busy pods cannot lock the others out. Zero: DefaultMaxConns.
	MaxConns int `json:"maxConns,omitempty"`
	// PassthroughPorts are captured ports that carry non-HTTP traffic: only
	// the source part of policies applies to them (L4). Zero: none.
	PassthroughPorts []int `json:"passthroughPorts,omitempty"`
}

// LogConfig configures the agent's logs.
type LogConfig struct {
	// Format is json or text. Zero: json.
	Format string `json:"format,omitempty"`
	// Level is debug, info, warn or error. Zero: info.
	Level string `json:"level,omitempty"`
}

// Duration is a time.Duration written as "10s" in YAML.
type Duration struct{ time.Duration }

// UnmarshalJSON accepts a Go duration string.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		return fmt.Errorf("duration must be a string like \"10s\": %w", err)
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if v < 0 {
		return fmt.Errorf("duration %q is negative", s)
	}
	d.Duration = v
	return nil
}

// MarshalJSON writes a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return []byte(`"` + d.String() + `"`), nil }

// Load reads a YAML config file strictly (unknown fields are errors) and
// applies defaults.
func Load(path string) (*Config, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	var c Config
	if err := yaml.UnmarshalStrict(b, &c); err != nil {
		return nil, fmt.Errorf("parse config %s: %w", path, err)
	}
	c.resolve(dirOf(path))
	c.Default()
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return &c, nil
}

// Default fills zero values with the documented defaults.
func (c *Config) Default() {
	if c.Mode == "" {
		c.Mode = ModeLocal
	}
	if c.NodeName == "" {
		c.NodeName = os.Getenv("NODE_NAME")
	}
	if c.NodeName == "" {
		c.NodeName, _ = os.Hostname()
	}
	if c.TrustDomain == "" {
		c.TrustDomain = "cluster.local"
	}
	if c.AdminAddress == "" {
		c.AdminAddress = "127.0.0.1:9901"
	}
	if c.DebugSocket == "" {
		c.DebugSocket = "/var/run/portcullis/debug.sock"
	}
	if c.ListenerPort == 0 {
		c.ListenerPort = 15006
	}
	if c.PinDir == "" {
		c.PinDir = "/sys/fs/bpf/portcullis/agent"
	}
	if c.ShutdownGrace.Duration == 0 {
		c.ShutdownGrace.Duration = 20 * time.Second
	}
	if c.LocalAcceleration.Mark == 0 {
		c.LocalAcceleration.Mark = DefaultAccelerationMark
	}
	if c.Audit.Path == "" {
		c.Audit.Path = "-"
	}
	if c.Audit.AllowSampleRate == nil {
		one := 1.0
		c.Audit.AllowSampleRate = &one
	}
	if c.Audit.Buffer == 0 {
		c.Audit.Buffer = 4096
	}
	if c.Log.Format == "" {
		c.Log.Format = "json"
	}
	if c.Log.Level == "" {
		c.Log.Level = "info"
	}
	if c.Kubernetes.PodName == "" {
		c.Kubernetes.PodName = os.Getenv("POD_NAME")
	}
	if c.Kubernetes.PodNamespace == "" {
		c.Kubernetes.PodNamespace = os.Getenv("POD_NAMESPACE")
	}
}

// sampleRateTolerance is how far, relatively, a recorded fraction 1/N may
// be from audit.allowSampleRate: 0.333 is taken as 1/3, 0.33 is refused.
const sampleRateTolerance = 0.005

// AllowSampling is how the audit log samples allow decisions
// (audit.Config.AllowSampling): one in every N, where AllowSampleRate is
// 1/N. 1 records every allow; AllowSampleRate 0 gives -1: none. Call it on
// a validated Config.
func (a AuditConfig) AllowSampling() int {
	switch r := *a.AllowSampleRate; {
	case r >= 1:
		return 1
	case r <= 0:
		return -1
	default:
		return int(math.Round(1 / r))
	}
}

// Validate reports every problem it finds, joined.
func (c *Config) Validate() error {
	var errs []error
	switch c.Mode {
	case ModeLocal:
		if c.Local.Workloads == "" {
			errs = append(errs, errors.New("local.workloads: required in local mode"))
		}
		if c.Local.Policies == "" {
			errs = append(errs, errors.New("local.policies: required in local mode"))
		}
	case ModeKubernetes:
		if c.NodeName == "" {
			errs = append(errs, errors.New("nodeName: required in kubernetes mode (set NODE_NAME from the downward API)"))
		}
	default:
		errs = append(errs, fmt.Errorf("mode: %q is not one of local, kubernetes", c.Mode))
	}
	if c.ListenerPort < 1 || c.ListenerPort > 65535 {
		errs = append(errs, fmt.Errorf("listenerPort: %d is not a TCP port", c.ListenerPort))
	}
	if c.AdminAddress != "off" {
		if _, _, err := net.SplitHostPort(c.AdminAddress); err != nil {
			errs = append(errs, fmt.Errorf("adminAddress: %w", err))
		}
	}
	if r := *c.Audit.AllowSampleRate; r < 0 || r > 1 || math.IsNaN(r) {
		errs = append(errs, fmt.Errorf("audit.allowSampleRate: %v is not within 0..1", r))
	} else if r > 0 && math.Abs(r*math.Round(1/r)-1) > sampleRateTolerance {
		lo, hi := math.Ceil(1/r), math.Floor(1/r)
		errs = append(errs, fmt.Errorf("audit.allowSampleRate: %v is not 1/N for a whole N: one allow in every N is recorded, so write %s (1/%.0f) or %s (1/%.0f)",
			r, strconv.FormatFloat(1/lo, 'g', 4, 64), lo, strconv.FormatFloat(1/hi, 'g', 4, 64), hi))
	}
	if c.Audit.Buffer < 0 {
		errs = append(errs, fmt.Errorf("audit.buffer: %d is negative", c.Audit.Buffer))
	}
	for _, l := range []struct {
		name string
		v    int
	}{
		{"limits.maxHeaderBytes", c.Limits.MaxHeaderBytes},
		{"limits.maxHeaders", c.Limits.MaxHeaders},
		{"limits.maxConnsPerPod", c.Limits.MaxConnsPerPod},
		{"limits.maxConns", c.Limits.MaxConns},
	} {
		if l.v < 0 {
			errs = append(errs, fmt.Errorf("%s: %d is negative (leave it out for the default)", l.name, l.v))
		}
	}
	for _, p := range c.Limits.PassthroughPorts {
		if p < 1 || p > 65535 {
			errs = append(errs, fmt.Errorf("limits.passthroughPorts: %d is not a TCP port", p))
		}
	}
	switch c.Log.Format {
	case "json", "text":
	default:
		errs = append(errs, fmt.Errorf("log.format: %q is not one of json, text", c.Log.Format))
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Errorf("log.level: %q is not one of debug, info, warn, error", c.Log.Level))
	}
	return errors.Join(errs...)
}
