// Package debugapi serves the agent's node debug API, the gRPC service
// portcullis.debug.v1.Debug (see proto/ and debugv1), on a root-only Unix
// socket, with server reflection so grpcurl can list and call it.
//
// The agent implements Backend; this package owns the transport, the socket's
// safety, request validation, and the fan-out of decision records to
// TailDecisions streams (Broadcaster), so that a slow debug client can never
// slow down the audit path that publishes the records.
package debugapi
