package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Mode says whether a policy's decisions are enforced or only reported.
// +kubebuilder:validation:Enum=Enforce;Audit
type Mode string

const (
	// ModeEnforce refuses the requests the policy refuses.
	ModeEnforce Mode = "Enforce"
	// ModeAudit reports what the policy would decide and never changes
	// what is enforced: a request an enforced policy or the namespace's
	// default deny refuses stays refused, and an Audit policy alone never
	// opens a workload of an enforced namespace.
	ModeAudit Mode = "Audit"
)

// Action says what a matching rule does.
// +kubebuilder:validation:Enum=Allow;Deny
type Action string

const (
	// ActionAllow: once any Allow policy selects a workload and port, a
	// request must match one of the Allow rules. In a namespace labelled
	// portcullis.dev/enforce=enabled nothing is allowed until an enforced
	// Allow policy selects the workload and port.
	ActionAllow Action = "Allow"
	// ActionDeny: a request matching a Deny rule is refused, whatever the
	// Allow policies say. Deny policies alone allow what they do not deny,
	// except in an enforced namespace, where the rest stays refused.
	ActionDeny Action = "Deny"
)

// AccessPolicySpec selects workloads of the policy's namespace and says
// which requests to them are allowed or denied.
// +kubebuilder:validation:XValidation:rule="self.action != 'Deny' || !has(self.rules) || self.rules.all(r, !has(r.when) || !has(r.when.tokenBoundToSource) || !r.when.tokenBoundToSource)",message="tokenBoundToSource is only meaningful in Allow policies"
type AccessPolicySpec struct {
	// Selector selects pods of the policy's namespace by label. Unset or
	// empty selects every pod of the namespace.
	// +optional
	Selector *metav1.LabelSelector `json:"selector,omitempty"`
	// Mode is Enforce or Audit. Empty means Enforce.
	// +optional
	// +kubebuilder:default=Enforce
	Mode Mode `json:"mode,omitempty"`
	// Action is Allow or Deny. Empty means Allow.
	// +optional
	// +kubebuilder:default=Allow
	Action Action `json:"action,omitempty"`
	// Rules are alternatives: a request matches the policy when it matches
	// one rule. An Allow policy without rules allows nothing (but still
	// selects the workload); a Deny policy without rules denies nothing.
	// An empty rule ({}) matches every request.
	// +optional
	// +kubebuilder:validation:MaxItems=1024
	Rules []Rule `json:"rules,omitempty"`
}

// Rule matches a request when every field present matches (AND across
// fields, OR inside a list).
type Rule struct {
	// From restricts the callers. Unset means any caller, anonymous included.
	// +optional
	From *Source `json:"from,omitempty"`
	// To restricts the destination port and the HTTP request. Unset means
	// any.
	// +optional
	To *Destination `json:"to,omitempty"`
	// When places conditions on the bearer token and the request. Any
	// token condition makes a valid token required for the rule. Only a
	// token in the Authorization header (Bearer) is seen: one in an
	// access_token query or form parameter is not, so a Deny rule with
	// token conditions does not match such a request.
	// +optional
	When *Conditions `json:"when,omitempty"`
}

// Source lists the callers a rule applies to: a caller matches when it is
// one of Workloads, or in one of Namespaces, or anonymous and Anonymous is
// true.
// +kubebuilder:validation:XValidation:rule="has(self.workloads) || has(self.namespaces) || (has(self.anonymous) && self.anonymous)",message="from must list workloads, namespaces or anonymous: true"
type Source struct {
	// Workloads are caller identities as "namespace/serviceaccount".
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[a-z0-9]([-.a-z0-9]*[a-z0-9])?$`
	// +listType=set
	Workloads []string `json:"workloads,omitempty"`
	// Namespaces are caller namespaces.
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	// +listType=set
	Namespaces []string `json:"namespaces,omitempty"`
	// Anonymous admits callers the node could not identify. False means
	// they do not match this rule.
	// +optional
	Anonymous bool `json:"anonymous,omitempty"`
}

// Destination restricts where a request goes.
type Destination struct {
	// Ports are destination ports of the workload. Empty means every port
	// the workload serves.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:Minimum=1
	// +kubebuilder:validation:items:Maximum=65535
	// +listType=set
	Ports []int32 `json:"ports,omitempty"`
	// Methods are HTTP methods, compared without regard to case (so a Deny
	// of GET also refuses "get"). Empty means any method.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:items:Pattern=`^[A-Za-z]+$`
	// +listType=set
	Methods []string `json:"methods,omitempty"`
	// Paths are request paths (no query): exact ("/healthz"), prefix
	// ("/api/*": "/api/" and below), suffix ("*.json"), or "*" (all); empty
	// means any. Matched case-sensitively against the decoded path ("//",
	// "." or ".." segments, '\', '#', control characters: 400 first). In a
	// Deny rule a trailing '/' does not count ("/admin" also refuses
	// "/admin/", "/admin/*" also "/admin"). ';' is ordinary. See
	// docs/architecture.md.
	//
	// Matching case-sensitively, a Deny of "/admin/*" misses "/ADMIN/x",
	// which Express and ASP.NET Core route like "/admin/x" by default, and
	// "/admin;x/y", which Tomcat and Spring read as "/admin/y": protect such
	// applications with Allow rules, which fail closed. In an Allow rule a
	// trailing '/' counts ("/healthz" does not allow "/healthz/").
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +kubebuilder:validation:items:Pattern=`^(\*|/[^*]*\*?|\*[^*/]+)$`
	// +listType=set
	Paths []string `json:"paths,omitempty"`
	// Hosts are values of the Host (:authority) header, compared without
	// regard to case, exact or "*.example.com"; a host without a port
	// matches the request host with any port. A trailing dot of the
	// request's host name is removed first. Empty means any host.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	// +listType=set
	Hosts []string `json:"hosts,omitempty"`
}

// IssuerRef names an Issuer of the policy's namespace or a ClusterIssuer.
type IssuerRef struct {
	// Kind is Issuer or ClusterIssuer. Empty means Issuer.
	// +optional
	// +kubebuilder:default=Issuer
	// +kubebuilder:validation:Enum=Issuer;ClusterIssuer
	Kind string `json:"kind,omitempty"`
	// Name of the Issuer or ClusterIssuer.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
}

// StringMatch matches a list-valued claim: the token must hold at least
// one of AnyOf and all of AllOf. At least one of the two is set.
// +kubebuilder:validation:XValidation:rule="(has(self.anyOf) && size(self.anyOf) > 0) || (has(self.allOf) && size(self.allOf) > 0)",message="anyOf or allOf must be non-empty"
type StringMatch struct {
	// AnyOf: the claim holds at least one of these values.
	// +optional
	// +kubebuilder:validation:MaxItems=256
	// +listType=set
	AnyOf []string `json:"anyOf,omitempty"`
	// AllOf: the claim holds every one of these values.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	// +listType=set
	AllOf []string `json:"allOf,omitempty"`
}

// ClaimMatch matches an arbitrary top-level claim: its value (or, for a
// list, one of its elements), formatted as a string, is one of Values.
type ClaimMatch struct {
	// Name of the claim, as in the token payload.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=256
	Name string `json:"name"`
	// Values accepted. At least one.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=256
	// +listType=set
	Values []string `json:"values"`
}

// Conditions are checks on the bearer token (and, through Expression, on
// the request and caller). Every field present must hold.
type Conditions struct {
	// Issuers that must have accepted the token. Empty means any issuer
	// trusted for the workload: the ClusterIssuers and the Issuers of the
	// policy's namespace (an Issuer never vouches for another namespace).
	// When a ClusterIssuer and an Issuer both accept a token, the
	// ClusterIssuer is the one that accepted it: list it here too, or give
	// the two distinct audiences.
	// +optional
	// +kubebuilder:validation:MaxItems=16
	Issuers []IssuerRef `json:"issuers,omitempty"`
	// Clients are calling applications: `azp` (v2 tokens) / `appid` (v1).
	// +optional
	Clients *StringMatch `json:"clients,omitempty"`
	// Roles are app roles from `roles`.
	// +optional
	Roles *StringMatch `json:"roles,omitempty"`
	// Groups are group object IDs from `groups`. A token in the overage
	// form (too many groups to list) never satisfies this condition.
	// +optional
	Groups *StringMatch `json:"groups,omitempty"`
	// Scopes are delegated permissions from `scp`.
	// +optional
	Scopes *StringMatch `json:"scopes,omitempty"`
	// Claims are conditions on arbitrary claims; all must hold.
	// +optional
	// +kubebuilder:validation:MaxItems=32
	Claims []ClaimMatch `json:"claims,omitempty"`
	// TokenBoundToSource requires the token's client (`azp`/`appid`) to be
	// the Entra Workload ID client ID of the calling workload, so a token
	// replayed from another pod is refused. False means no such check.
	// The caller's client ID is its ServiceAccount's annotation
	// azure.workload.identity/client-id, which whoever may edit that
	// ServiceAccount can set: restrict `from` in the same rule.
	// +optional
	TokenBoundToSource bool `json:"tokenBoundToSource,omitempty"`
	// Expression is a CEL expression returning bool over `claims` (map of
	// the token's claims), `request` (method, path, host, headers: map of
	// lower-case name to comma-joined values) and `source` (identity,
	// namespace, serviceAccount, clientID, anonymous). An expression that
	// mentions `claims` requires a token. Empty means no expression.
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Expression string `json:"expression,omitempty"`
}

// AccessPolicyStatus is reserved: the agents do not write it (one agent
// per node would contend for one object). A policy an agent cannot apply
// as written gets an InvalidPolicy Warning Event instead.
type AccessPolicyStatus struct {
	// ObservedGeneration is the generation the conditions describe.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions are reserved.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// AccessPolicy says which callers, with which tokens, may reach the
// selected workloads of its namespace.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=ap,categories=portcullis
// +kubebuilder:printcolumn:name="Action",type=string,JSONPath=`.spec.action`
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type AccessPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   AccessPolicySpec   `json:"spec"`
	Status AccessPolicyStatus `json:"status,omitempty"`
}

// AccessPolicyList is a list of AccessPolicies.
// +kubebuilder:object:root=true
type AccessPolicyList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []AccessPolicy `json:"items"`
}
