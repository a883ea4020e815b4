package debugapi

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"github.com/portcullis-mesh/portcullis/agent/debugapi/debugv1"
)

// shutdownGrace bounds how long Serve waits for calls in flight when its
// context ends before cutting them off.
const shutdownGrace = 5 * time.Second

// Serve serves the debug API for b on the Unix socket at socketPath (empty
// means DefaultSocketPath; see Listen) until ctx ends, then stops, ending
// TailDecisions streams, and removes the socket. It returns nil after a
// shutdown caused by ctx.
func Serve(ctx context.Context, socketPath string, b Backend) error {
	l, err := Listen(socketPath)
	if err != nil {
		return err
	}
	return ServeListener(ctx, l, b)
}

// ServeListener is Serve on a listener the caller opened (e.g. with Listen).
// It closes l.
func ServeListener(ctx context.Context, l net.Listener, b Backend) error {
	stopping := make(chan struct{})
	gs := grpc.NewServer()
	debugv1.RegisterDebugServer(gs, &service{b: b, stopping: stopping})
	reflection.Register(gs)

	served := make(chan error, 1)
	go func() { served <- gs.Serve(l) }()
	select {
	case err := <-served:
		return fmt.Errorf("serve debug api: %w", err)
	case <-ctx.Done():
	}
	close(stopping)
	stopped := make(chan struct{})
	go func() {
		gs.GracefulStop()
		close(stopped)
	}()
	t := time.NewTimer(shutdownGrace)
	defer t.Stop()
	select {
	case <-stopped:
	case <-t.C:
		gs.Stop()
		<-stopped
	}
	<-served
	return nil
}

type service struct {
	debugv1.UnimplementedDebugServer
	b        Backend
	stopping <-chan struct{}
}

func (s *service) GetStatus(ctx context.Context, _ *debugv1.GetStatusRequest) (*debugv1.GetStatusResponse, error) {
	r, err := s.b.Status(ctx)
	return r, toStatus(err)
}

func (s *service) ListWorkloads(ctx context.Context, _ *debugv1.ListWorkloadsRequest) (*debugv1.ListWorkloadsResponse, error) {
	w, err := s.b.Workloads(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &debugv1.ListWorkloadsResponse{Workloads: w}, nil
}

func (s *service) ListPolicies(ctx context.Context, _ *debugv1.ListPoliciesRequest) (*debugv1.ListPoliciesResponse, error) {
	r, err := s.b.Policies(ctx)
	return r, toStatus(err)
}

func (s *service) ListIssuers(ctx context.Context, _ *debugv1.ListIssuersRequest) (*debugv1.ListIssuersResponse, error) {
	is, err := s.b.Issuers(ctx)
	if err != nil {
		return nil, toStatus(err)
	}
	return &debugv1.ListIssuersResponse{Issuers: is}, nil
}

func (s *service) TailDecisions(req *debugv1.TailDecisionsRequest, stream grpc.ServerStreamingServer[debugv1.DecisionRecord]) error {
	f, err := NewFilter(req)
	if err != nil {
		return status.Error(codes.InvalidArgument, err.Error())
	}
	sub := s.b.SubscribeDecisions()
	defer sub.Close()

	var recent []*debugv1.DecisionRecord
	for _, r := range sub.Recent() {
		if f.Match(r) {
			recent = append(recent, r)
		}
	}
	if n := int(req.GetLimit()); n > 0 && len(recent) > n {
		recent = recent[len(recent)-n:]
	}
	for _, r := range recent {
		if err := stream.Send(r); err != nil {
			return err
		}
	}
	if !req.GetFollow() {
		return nil
	}
	ctx := stream.Context()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-s.stopping:
			// The agent is going away: say so, so a follower can tell this
			// from the end of a finite listing (the CLI exits 3).
			return status.Error(codes.Unavailable, "agent shutting down")
		case r := <-sub.C():
			if !f.Match(r) {
				continue
			}
			if d := sub.TakeDropped(); d > 0 {
				r = proto.CloneOf(r)
				r.DroppedBefore = uint32(min(d, math.MaxUint32))
			}
			if err := stream.Send(r); err != nil {
				return err
			}
		}
	}
}

func (s *service) Explain(ctx context.Context, req *debugv1.ExplainRequest) (*debugv1.ExplainResponse, error) {
	if err := ValidateExplain(req); err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	if tok := bareToken(req.GetToken()); tok != "" {
		req.Token = tok
	}
	r, err := s.b.Explain(ctx, req)
	return r, toStatus(err)
}

func (s *service) DumpBPFMaps(ctx context.Context, _ *debugv1.DumpBPFMapsRequest) (*debugv1.DumpBPFMapsResponse, error) {
	r, err := s.b.BPFMaps(ctx)
	return r, toStatus(err)
}

func (s *service) InspectToken(ctx context.Context, req *debugv1.InspectTokenRequest) (*debugv1.InspectTokenResponse, error) {
	tok := bareToken(req.GetToken())
	if tok == "" {
		return nil, status.Error(codes.InvalidArgument, "want exactly one token, optionally after \"Bearer\"")
	}
	r, err := s.b.InspectToken(ctx, tok)
	return r, toStatus(err)
}

// bareToken strips surrounding space and an optional "Bearer" scheme, as
// an operator may paste an Authorization header's value.
func bareToken(s string) string {
	f := strings.Fields(s)
	if len(f) > 0 && strings.EqualFold(f[0], "bearer") {
		f = f[1:]
	}
	if len(f) != 1 {
		return ""
	}
	return f[0]
}

// toStatus maps a Backend error to a gRPC status error.
func toStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	switch {
	case errors.Is(err, ErrUnsupported):
		return status.Error(codes.Unimplemented, err.Error())
	case errors.Is(err, context.Canceled):
		return status.Error(codes.Canceled, err.Error())
	case errors.Is(err, context.DeadlineExceeded):
		return status.Error(codes.DeadlineExceeded, err.Error())
	}
	return status.Error(codes.Internal, err.Error())
}
