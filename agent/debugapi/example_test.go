package debugapi_test

import (
	"context"
	"log"

	"github.com/portcullis-mesh/portcullis/agent/debugapi"
	"github.com/portcullis-mesh/portcullis/agent/debugapi/debugv1"
)

// agentBackend stands for the agent's implementation of Backend; embedding
// a *Broadcaster provides SubscribeDecisions.
type agentBackend struct {
	debugapi.Backend
	*debugapi.Broadcaster
}

func (b agentBackend) SubscribeDecisions() *debugapi.Subscription {
	return b.Broadcaster.SubscribeDecisions()
}

func ExampleServe() {
	decisions := debugapi.NewBroadcaster(0)
	b := agentBackend{Broadcaster: decisions}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		if err := debugapi.Serve(ctx, debugapi.DefaultSocketPath, b); err != nil {
			log.Print(err)
		}
	}()

	// Wherever the agent writes an audit record, it also publishes it:
	decisions.Publish(&debugv1.DecisionRecord{Decision: "deny", Reason: "token_missing"})
}
