package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Kind names, as they appear in YAML and in IssuerRef.Kind.
const (
	KindIssuer        = "Issuer"
	KindClusterIssuer = "ClusterIssuer"
	KindAccessPolicy  = "AccessPolicy"
)

// AzureCloud names a national cloud of Microsoft Entra ID; it selects the
// default authority host.
// +kubebuilder:validation:Enum=AzurePublic;AzureUSGovernment;AzureChina
type AzureCloud string

// The national clouds and their authority hosts.
const (
	// AzureCloudPublic is login.microsoftonline.com.
	AzureCloudPublic AzureCloud = "AzurePublic"
	// AzureCloudUSGovernment is login.microsoftonline.us.
	AzureCloudUSGovernment AzureCloud = "AzureUSGovernment"
	// AzureCloudChina is login.chinacloudapi.cn.
	AzureCloudChina AzureCloud = "AzureChina"
)

// AuthorityHost returns the https authority host of the cloud; the empty
// cloud is AzurePublic.
func (c AzureCloud) AuthorityHost() string {
	switch c {
	case AzureCloudUSGovernment:
		return "https://login.microsoftonline.us"
	case AzureCloudChina:
		return "https://login.chinacloudapi.cn"
	default:
		return "https://login.microsoftonline.com"
	}
}

// IssuerSpec says which bearer tokens are trusted. Exactly one of AzureAD
// and OIDC is set.
// +kubebuilder:validation:XValidation:rule="has(self.azureAD) != has(self.oidc)",message="exactly one of azureAD or oidc must be set"
type IssuerSpec struct {
	// AzureAD trusts access tokens of a Microsoft Entra ID (Azure AD) tenant.
	// +optional
	AzureAD *AzureADIssuer `json:"azureAD,omitempty"`
	// OIDC trusts tokens of a generic OpenID Connect provider.
	// +optional
	OIDC *OIDCIssuer `json:"oidc,omitempty"`
	// ClockSkew is the tolerance applied to exp, nbf and iat. Zero (unset)
	// means the token checker's default of one minute.
	// +optional
	ClockSkew *metav1.Duration `json:"clockSkew,omitempty"`
	// Algorithms is the JWS signature algorithm allow-list. Empty means
	// [RS256], what Entra ID signs with; "none" and HMAC are never accepted.
	// +optional
	// +kubebuilder:validation:MaxItems=9
	// +kubebuilder:validation:items:Enum=RS256;RS384;RS512;PS256;PS384;PS512;ES256;ES384;ES512
	// +listType=set
	Algorithms []string `json:"algorithms,omitempty"`
	// ForwardClaims maps a claim name to the request header carrying its
	// value to the application once the request is allowed (for example
	// oid: X-Caller-Oid); client-sent copies are removed. Empty means none.
	// Framing, credential and caller headers are refused: Host, Content-*,
	// Transfer-Encoding, Connection, Authorization, Cookie, Forwarded,
	// X-Forwarded-*, X-Portcullis-* and the like.
	// +optional
	// +kubebuilder:validation:MaxProperties=32
	ForwardClaims map[string]HeaderName `json:"forwardClaims,omitempty"`
}

// The rule below mirrors tokencheck/policy/headers.go, which also checks
// the name's syntax; keep them together.

// HeaderName is the name of a request header set from a claim. It may not
// contain '_': many servers (nginx, Apache, gunicorn) drop such names and
// CGI-style stacks read '_' as '-', so a client's "X-Claim-Oid" could pose
// as "X_Claim_Oid".
// +kubebuilder:validation:XValidation:rule="!self.contains('_')",message="a forwardClaims header name may not contain '_' (servers drop it or read it as '-'): use '-'"
// +kubebuilder:validation:MinLength=1
// +kubebuilder:validation:MaxLength=256
// +kubebuilder:validation:XValidation:rule="!(self.lowerAscii().replace('_', '-') in ['host', 'connection', 'keep-alive', 'te', 'trailer', 'transfer-encoding', 'upgrade', 'http2-settings', 'expect', 'forwarded', 'authorization', 'cookie', 'proxy-authorization', 'x-real-ip', 'x-client-ip', 'true-client-ip', 'x-http-method-override', 'x-http-method', 'x-method-override', 'x-rewrite-url', 'x-original-forwarded-for', 'client-ip', 'x-cluster-client-ip', 'x-envoy-external-address', 'cf-connecting-ip', 'fastly-client-ip']) && !['x-portcullis-', 'x-forwarded-', 'x-original-', 'proxy-', 'content-', 'grpc-', 'sec-'].exists(p, self.lowerAscii().replace('_', '-').startsWith(p))",messageExpression="'header ' + self + ' is reserved (a framing, credential or caller header): choose another name, such as X-Claim-<Claim>'"
type HeaderName string

// AzureADIssuer describes an Entra ID tenant. The accepted `iss` is the
// one of the tenant's discovery document ({tenantid} filled from the
// token's `tid` for multi-tenant configurations).
// +kubebuilder:validation:XValidation:rule="(self.tenantID in ['common', 'organizations']) == (has(self.allowedTenants) && size(self.allowedTenants) > 0)",message="allowedTenants is required with tenantID common or organizations (\"*\" accepts every tenant) and only valid with them"
type AzureADIssuer struct {
	// TenantID is the directory (tenant) ID, or `common` / `organizations`
	// for multi-tenant applications (then allowedTenants lists the tenants
	// whose tokens are accepted).
	// +kubebuilder:validation:Pattern=`^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|common|organizations)$`
	TenantID string `json:"tenantID"`
	// Cloud selects the authority host. Empty means AzurePublic.
	// +optional
	// +kubebuilder:default=AzurePublic
	Cloud AzureCloud `json:"cloud,omitempty"`
	// AuthorityHost overrides where discovery and keys are fetched from
	// (an https URL, or http on a loopback address for a local test issuer
	// such as tools/devidp); it does not change the accepted `iss`. Empty
	// means the cloud's host. Refused on a namespaced Issuer when the agent
	// sets kubernetes.restrictNamespacedIssuers.
	// +optional
	// +kubebuilder:validation:Pattern=`^(https://[^/?#]+|http://(127\.[0-9.]+|localhost|\[::1\])(:[0-9]+)?)/?$`
	AuthorityHost string `json:"authorityHost,omitempty"`
	// Audiences are the accepted `aud` values: the API's application ID
	// URI and/or client ID. At least one.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +listType=set
	Audiences []string `json:"audiences"`
	// AcceptedVersions are the accepted access-token versions (`ver` 1.0
	// and/or 2.0). Empty means both: which one a client receives is decided
	// by the API's app registration (accessTokenAcceptedVersion).
	// +optional
	// +kubebuilder:validation:MaxItems=2
	// +listType=set
	AcceptedVersions []AccessTokenVersion `json:"acceptedVersions,omitempty"`
	// AllowedTenants lists the tenant IDs accepted when TenantID is
	// common or organizations, where it is required; "*" accepts every
	// tenant. Must be empty for a single tenant.
	// +optional
	// +kubebuilder:validation:MaxItems=64
	// +kubebuilder:validation:items:Pattern=`^([0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}|\*)$`
	// +listType=set
	AllowedTenants []string `json:"allowedTenants,omitempty"`
}

// AccessTokenVersion is an Entra access-token version: 1 or 2.
// +kubebuilder:validation:Enum=1;2
type AccessTokenVersion int32

// OIDCIssuer describes a generic OpenID Connect provider.
type OIDCIssuer struct {
	// Issuer is the exact `iss`; discovery is read from
	// <issuer>/.well-known/openid-configuration unless JWKSURI is set.
	// +kubebuilder:validation:Pattern=`^(https://|http://(127\.[0-9.]+|localhost|\[::1\])(:[0-9]+)?(/|$))`
	Issuer string `json:"issuer"`
	// JWKSURI is where the signing keys are fetched from. Empty means the
	// jwks_uri of the discovery document. Refused, as is an http Issuer, on
	// a namespaced Issuer when the agent sets
	// kubernetes.restrictNamespacedIssuers.
	// +optional
	// +kubebuilder:validation:Pattern=`^(https://|http://(127\.[0-9.]+|localhost|\[::1\])(:[0-9]+)?(/|$))`
	JWKSURI string `json:"jwksURI,omitempty"`
	// Audiences are the accepted `aud` values. At least one.
	// +kubebuilder:validation:MinItems=1
	// +kubebuilder:validation:MaxItems=16
	// +listType=set
	Audiences []string `json:"audiences"`
}

// IssuerStatus is reserved: the agents do not write it (one agent per node
// would contend for one object). An issuer an agent cannot apply gets an
// InvalidPolicy Warning Event; `portcullis issuers` on a node shows its
// keys and last error.
type IssuerStatus struct {
	// ObservedGeneration is the generation the conditions describe.
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Conditions are reserved.
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Issuer trusts the tokens of one identity provider for the workloads of
// its namespace only.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:categories=portcullis
// +kubebuilder:printcolumn:name="Tenant",type=string,JSONPath=`.spec.azureAD.tenantID`
// +kubebuilder:printcolumn:name="OIDC",type=string,JSONPath=`.spec.oidc.issuer`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Issuer struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   IssuerSpec   `json:"spec"`
	Status IssuerStatus `json:"status,omitempty"`
}

// IssuerList is a list of Issuers.
// +kubebuilder:object:root=true
type IssuerList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Issuer `json:"items"`
}

// ClusterIssuer is an Issuer trusted for the workloads of every namespace.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:scope=Cluster,categories=portcullis
// +kubebuilder:printcolumn:name="Tenant",type=string,JSONPath=`.spec.azureAD.tenantID`
// +kubebuilder:printcolumn:name="OIDC",type=string,JSONPath=`.spec.oidc.issuer`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type ClusterIssuer struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   IssuerSpec   `json:"spec"`
	Status IssuerStatus `json:"status,omitempty"`
}

// ClusterIssuerList is a list of ClusterIssuers.
// +kubebuilder:object:root=true
type ClusterIssuerList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []ClusterIssuer `json:"items"`
}
