// Package localfile is the local-mode workload source: the node's workloads
// from a YAML file, watched for changes, reported as identity events like the
// Kubernetes source reports pods. It lets the agent, the demo and the tests
// run without a cluster.
//
// The file lists workloads and, optionally, namespace labels:
//
//	workloads:
//	- namespace: shop
//	  name: orders-api
//	  serviceAccount: orders
//	  clientID: 22222222-2222-2222-2222-222222222222
//	  labels: {app: orders-api}
//	  ips: [198.18.0.2, "fd00:18::2"]
//	  netns: /run/netns/orders-api
//	  cgroup: /sys/fs/cgroup/unified/demo/orders-api
//	  localAcceleration: true
//	namespaces:
//	  shop: {portcullis.dev/enforce: enabled}
//
// A workload without netns is remote (another node): it only names its
// addresses for the IP cache. localAcceleration, when present, is the
// workload's choice about local acceleration (identity.Acceleration); absent,
// the agent's default applies.
package localfile

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"time"

	"github.com/fsnotify/fsnotify"
	"sigs.k8s.io/yaml"

	"github.com/portcullis-mesh/portcullis/identity"
)

// File is the YAML document.
type File struct {
	Workloads  []Entry                      `json:"workloads"`
	Namespaces map[string]map[string]string `json:"namespaces,omitempty"`
}

// Entry is one workload of the file.
type Entry struct {
	Namespace      string            `json:"namespace"`
	Name           string            `json:"name"`
	UID            string            `json:"uid,omitempty"`
	ServiceAccount string            `json:"serviceAccount,omitempty"`
	ClientID       string            `json:"clientID,omitempty"`
	Labels         map[string]string `json:"labels,omitempty"`
	IPs            []string          `json:"ips,omitempty"`
	Netns          string            `json:"netns,omitempty"`
	Cgroup         string            `json:"cgroup,omitempty"`
	// HostNetwork marks a workload that shares the node's netns: never
	// captured.
	HostNetwork bool `json:"hostNetwork,omitempty"`
	// LocalAcceleration is the workload's choice about local acceleration
	// (identity.Workload.LocalAcceleration). Nil: the agent's default.
	LocalAcceleration *bool `json:"localAcceleration,omitempty"`
}

// Parse decodes and validates a workloads file strictly.
func Parse(name string, data []byte) ([]identity.Event, error) {
	var f File
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	var errs []error
	seen := map[string]bool{}
	var out []identity.Event
	for i, e := range f.Workloads {
		at := fmt.Sprintf("%s: workloads[%d]", name, i)
		if e.Namespace == "" || e.Name == "" {
			errs = append(errs, fmt.Errorf("%s: namespace and name are required", at))
			continue
		}
		w := identity.Workload{
			Namespace: e.Namespace, Name: e.Name, UID: e.UID, ServiceAccount: e.ServiceAccount,
			ClientID: e.ClientID, Labels: maps.Clone(e.Labels), NamespaceLabels: maps.Clone(f.Namespaces[e.Namespace]),
			NetnsPath: e.Netns, CgroupPath: e.Cgroup, LocalAcceleration: identity.AccelerationOf(e.LocalAcceleration),
		}
		if seen[w.Key()] {
			errs = append(errs, fmt.Errorf("%s: %s is listed twice", at, w.Key()))
			continue
		}
		seen[w.Key()] = true
		for _, s := range e.IPs {
			a, err := netip.ParseAddr(s)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s (%s): ips: %w", at, w.Key(), err))
				continue
			}
			w.IPs = append(w.IPs, a)
		}
		ev := identity.Event{Type: identity.EventAdded, Workload: w}
		if e.HostNetwork {
			ev.Exclusion = identity.ExcludedHostNetwork
		}
		ev.NamespaceEnforced = f.Namespaces[e.Namespace][identity.EnforceLabel] == identity.EnforceEnabled
		out = append(out, ev)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Workload.Key() < out[j].Workload.Key() })
	return out, errors.Join(errs...)
}

// Source reports the workloads of one file.
type Source struct {
	path     string
	debounce time.Duration
	log      *slog.Logger
}

// New returns a Source for path. debounce zero means 200ms; logger nil
// means discard.
func New(path string, debounce time.Duration, logger *slog.Logger) *Source {
	if debounce == 0 {
		debounce = 200 * time.Millisecond
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Source{path: path, debounce: debounce, log: logger}
}

// Run reports every workload of the file, then EventSynced, then changes
// until ctx ends. An unreadable or invalid file at start is an error; later,
// an invalid edit is logged and ignored (the last valid file stays in force).
func (s *Source) Run(ctx context.Context, h identity.Handler) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", s.path, err)
	}
	defer w.Close()
	// Watch the directory: editors and kubelet replace files by rename.
	if err := w.Add(filepath.Dir(s.path)); err != nil {
		return fmt.Errorf("watch %s: %w", filepath.Dir(s.path), err)
	}
	data, err := os.ReadFile(s.path)
	if err != nil {
		return fmt.Errorf("read workloads: %w", err)
	}
	cur, err := Parse(s.path, data)
	if err != nil {
		return err
	}
	for _, ev := range cur {
		h(ev)
	}
	h(identity.Event{Type: identity.EventSynced})

	var timer <-chan time.Time
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return nil
			}
			// The file itself, or in a ConfigMap volume the ..data
			// symbolic link the kubelet swaps atomically (the file is a
			// link through it and sees no event of its own).
			if filepath.Clean(ev.Name) == filepath.Clean(s.path) || filepath.Base(ev.Name) == "..data" {
				timer = time.After(s.debounce)
			}
		case err, ok := <-w.Errors:
			if !ok {
				return nil
			}
			s.log.Warn("watch workloads file", "error", err)
		case <-timer:
			timer = nil
			nd, err := os.ReadFile(s.path)
			if err != nil {
				s.log.Warn("read workloads file", "error", err)
				continue
			}
			if bytes.Equal(nd, data) {
				continue
			}
			next, err := Parse(s.path, nd)
			if err != nil {
				s.log.Warn("workloads file invalid; keeping the previous one", "error", err)
				continue
			}
			data = nd
			for _, ev := range Diff(cur, next) {
				h(ev)
			}
			cur = next
		}
	}
}

// Diff returns the events that turn prev into next (both sorted by key, as
// Parse returns them).
func Diff(prev, next []identity.Event) []identity.Event {
	old := map[string]identity.Event{}
	for _, ev := range prev {
		old[ev.Workload.Key()] = ev
	}
	var out []identity.Event
	for _, ev := range next {
		k := ev.Workload.Key()
		o, ok := old[k]
		delete(old, k)
		switch {
		case !ok:
			out = append(out, ev)
		case !same(o, ev):
			ev.Type = identity.EventUpdated
			out = append(out, ev)
		}
	}
	keys := slices.Sorted(maps.Keys(old))
	for _, k := range keys {
		ev := old[k]
		ev.Type = identity.EventRemoved
		out = append(out, ev)
	}
	return out
}

func same(a, b identity.Event) bool {
	x, y := a.Workload, b.Workload
	return a.Exclusion == b.Exclusion && a.NamespaceEnforced == b.NamespaceEnforced &&
		x.UID == y.UID && x.ServiceAccount == y.ServiceAccount && x.ClientID == y.ClientID &&
		maps.Equal(x.Labels, y.Labels) && maps.Equal(x.NamespaceLabels, y.NamespaceLabels) &&
		slices.Equal(x.IPs, y.IPs) && x.NetnsPath == y.NetnsPath && x.CgroupPath == y.CgroupPath &&
		x.LocalAcceleration == y.LocalAcceleration
}
