package debugapi

import (
	"context"
	"errors"

	"github.com/portcullis-mesh/portcullis/agent/debugapi/debugv1"
)

// Backend is what the agent exposes to the debug API. Every method is
// read-only and may be called concurrently. Methods return errors made with
// google.golang.org/grpc/status to choose the gRPC code; any other error is
// reported as Internal, except ErrUnsupported (Unimplemented) and context
// errors.
type Backend interface {
	// Status reports the agent's version, mode and component health.
	Status(ctx context.Context) (*debugv1.GetStatusResponse, error)
	// Workloads lists the pods known on this node.
	Workloads(ctx context.Context) ([]*debugv1.Workload, error)
	// Policies lists the running policy set and its generation.
	Policies(ctx context.Context) (*debugv1.ListPoliciesResponse, error)
	// Issuers lists the configured issuers and their key sets.
	Issuers(ctx context.Context) ([]*debugv1.Issuer, error)
	// SubscribeDecisions registers a subscriber to decision records. A
	// *Broadcaster embedded in the backend implements it.
	SubscribeDecisions() *Subscription
	// Explain evaluates a request that has already passed validation here:
	// Workload is "namespace/name", at most one of Token and Claims is set.
	Explain(ctx context.Context, req *debugv1.ExplainRequest) (*debugv1.ExplainResponse, error)
	// BPFMaps dumps the datapath's maps.
	BPFMaps(ctx context.Context) (*debugv1.DumpBPFMapsResponse, error)
	// InspectToken validates a non-empty token against the live issuers.
	// It must not log or forward the token.
	InspectToken(ctx context.Context, token string) (*debugv1.InspectTokenResponse, error)
}

// ErrUnsupported is returned by a Backend for a call this agent cannot
// answer (e.g. DumpBPFMaps with the datapath disabled).
var ErrUnsupported = errors.New("not supported by this agent")

// The values of debugv1.DatapathStatus.State the agent reports.
const (
	// DatapathAttached: every pod the policies select is enrolled.
	DatapathAttached = "attached"
	// DatapathDegraded: some pods are failing to enrol (their
	// Workload.attach_error says why); the others are enforced.
	DatapathDegraded = "degraded"
)

// Healthy reports whether st describes an agent that is ready and whose
// datapath is not degraded: what `portcullis status` exits 0 for.
func Healthy(st *debugv1.GetStatusResponse) bool {
	return st.GetReady() && st.GetDatapath().GetState() == DatapathAttached
}
