// Package celvars holds the Go types behind the `request` and `source`
// variables of AccessPolicy CEL expressions. They live in their own package
// because CEL names native types after their Go package:
// celvars.Request, celvars.Source.
package celvars

// Request is the HTTP request as seen by an expression.
type Request struct {
	// Method is the request method as sent (e.g. "GET").
	Method string `cel:"method"`
	// Path is the request path without the query.
	Path string `cel:"path"`
	// Host is the Host / :authority value.
	Host string `cel:"host"`
	// Headers maps lower-case header names to their comma-joined values.
	Headers map[string]string `cel:"headers"`
}

// Source is the caller as seen by an expression.
type Source struct {
	// Identity is the caller's SPIFFE ID, or "anonymous".
	Identity string `cel:"identity"`
	// Namespace and ServiceAccount are empty for an anonymous caller.
	Namespace      string `cel:"namespace"`
	ServiceAccount string `cel:"serviceAccount"`
	// ClientID is the caller's Entra Workload ID client ID, if any.
	ClientID string `cel:"clientID"`
	// Anonymous is true when the caller could not be identified.
	Anonymous bool `cel:"anonymous"`
}
