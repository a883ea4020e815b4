// Package debugv1 holds the Go code generated from
// agent/debugapi/proto/portcullis/debug/v1/debug.proto: the messages and the
// client and server stubs of the portcullis.debug.v1.Debug service.
package debugv1
