// Package identity is the workload model: who a pod is (namespace, service
// account, labels, addresses, network namespace, cgroup) and the small
// integer IDs the datapath uses to name it.
//
// The root package holds plain value types only. Sources of workloads (a
// local file, Kubernetes informers) and node discovery live in
// sub-packages; nothing here imports Kubernetes or the datapath.
package identity

import (
	"fmt"
	"net/netip"
)

// DefaultTrustDomain is the SPIFFE trust domain used when none is configured.
const DefaultTrustDomain = "cluster.local"

// ClientIDAnnotation is the service-account annotation that carries the Entra
// Workload ID application (client) ID of a workload.
const ClientIDAnnotation = "azure.workload.identity/client-id"

// LocalAccelerationAnnotation is the pod annotation by which a workload
// chooses local acceleration ("true" or "false"); without it, the node's
// default applies. See Acceleration.
const LocalAccelerationAnnotation = "portcullis.dev/local-acceleration"

// ID is the small integer that names an identity in BPF maps. The zero ID
// means "no identity known" (a process outside any enrolled pod).
type ID uint32

// Workload is a pod as the agent sees it.
type Workload struct {
	// Namespace and Name identify the pod.
	Namespace string
	Name      string
	// UID is the pod's Kubernetes UID; empty in local mode unless set.
	UID string
	// ServiceAccount is the pod's service account; empty means "default".
	ServiceAccount string
	// ClientID is the Entra Workload ID client ID of the service account
	// (ClientIDAnnotation); empty when the workload has none.
	ClientID string
	// Labels are the pod's labels, used by policy selectors.
	Labels map[string]string
	// NamespaceLabels are the labels of the pod's namespace.
	NamespaceLabels map[string]string
	// IPs are the pod's addresses (IPv4 and/or IPv6).
	IPs []netip.Addr
	// NetnsPath is a path to the pod's network namespace (e.g.
	// /proc/<pid>/ns/net or /run/netns/<name>); empty for a remote pod.
	NetnsPath string
	// CgroupPath is the pod's cgroup v2 directory; empty for a remote pod.
	CgroupPath string
	// LocalAcceleration is the workload's own choice about local
	// acceleration (LocalAccelerationAnnotation, or localAcceleration in
	// a workloads file); the zero value leaves it to the node.
	LocalAcceleration Acceleration
}

// Acceleration is a workload's choice about local acceleration: the agent
// moving the bytes between itself and the application through a sockmap
// rather than TCP over the pod's loopback. It is the application's to make:
// an application that reads its sockets with splice(2) stalls when
// accelerated.
type Acceleration uint8

const (
	// AccelerationDefault: the workload has no opinion; the node's
	// default (the agent's localAcceleration.enabled) applies.
	AccelerationDefault Acceleration = iota
	// AccelerationOn: accelerate, whatever the node's default.
	AccelerationOn
	// AccelerationOff: never accelerate, whatever the node's default.
	AccelerationOff
)

// ParseAcceleration parses a LocalAccelerationAnnotation value: "true" or
// "false". Anything else is an error, and the caller should treat the
// workload as having no opinion (AccelerationDefault).
func ParseAcceleration(s string) (Acceleration, error) {
	switch s {
	case "true":
		return AccelerationOn, nil
	case "false":
		return AccelerationOff, nil
	}
	return AccelerationDefault, fmt.Errorf("parse %s: got %q, want \"true\" or \"false\"", LocalAccelerationAnnotation, s)
}

// AccelerationOf returns the Acceleration of an optional boolean, as a
// workloads file states it: nil is AccelerationDefault.
func AccelerationOf(b *bool) Acceleration {
	switch {
	case b == nil:
		return AccelerationDefault
	case *b:
		return AccelerationOn
	default:
		return AccelerationOff
	}
}

// Enabled resolves the choice against the node's default.
func (a Acceleration) Enabled(nodeDefault bool) bool {
	switch a {
	case AccelerationOn:
		return true
	case AccelerationOff:
		return false
	default:
		return nodeDefault
	}
}

func (a Acceleration) String() string {
	switch a {
	case AccelerationDefault:
		return "default"
	case AccelerationOn:
		return "on"
	case AccelerationOff:
		return "off"
	default:
		return "unknown"
	}
}

// Key returns "namespace/name", the workload's unique key on a node.
func (w *Workload) Key() string { return w.Namespace + "/" + w.Name }

// SA returns the service account name, "default" when unset.
func (w *Workload) SA() string {
	if w.ServiceAccount == "" {
		return "default"
	}
	return w.ServiceAccount
}

// SPIFFEID returns spiffe://<trustDomain>/ns/<namespace>/sa/<serviceaccount>.
func (w *Workload) SPIFFEID(trustDomain string) string {
	return SPIFFEID(trustDomain, w.Namespace, w.SA())
}

// Source returns the caller identity this workload presents when it opens a
// connection.
func (w *Workload) Source(trustDomain string) Source {
	return Source{
		ID:             w.SPIFFEID(trustDomain),
		Namespace:      w.Namespace,
		ServiceAccount: w.SA(),
		ClientID:       w.ClientID,
	}
}

// SPIFFEID formats a workload identity.
func SPIFFEID(trustDomain, namespace, serviceAccount string) string {
	if trustDomain == "" {
		trustDomain = DefaultTrustDomain
	}
	return fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", trustDomain, namespace, serviceAccount)
}

// Source is the identity of the caller of a request, as established by the
// datapath (same-node socket record) or the IP cache (cross-node). It is
// never taken from anything the client sends.
type Source struct {
	// ID is the SPIFFE ID; empty when Anonymous.
	ID string
	// Namespace and ServiceAccount of the caller; empty when Anonymous.
	Namespace      string
	ServiceAccount string
	// ClientID is the caller's Entra Workload ID client ID, if any.
	ClientID string
	// Anonymous is true when the caller could not be identified.
	Anonymous bool
}

// AnonymousSource is the caller identity of a connection nobody vouches for.
var AnonymousSource = Source{Anonymous: true}

// String returns the SPIFFE ID, or "anonymous".
func (s Source) String() string {
	if s.Anonymous || s.ID == "" {
		return "anonymous"
	}
	return s.ID
}
