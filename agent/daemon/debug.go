package daemon

import (
	"context"
	"fmt"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/portcullis-mesh/portcullis/agent/audit"
	"github.com/portcullis-mesh/portcullis/agent/debugapi"
	debugv1 "github.com/portcullis-mesh/portcullis/agent/debugapi/debugv1"
	"github.com/portcullis-mesh/portcullis/agent/enforcer"
	"github.com/portcullis-mesh/portcullis/bpf"
	"github.com/portcullis-mesh/portcullis/identity"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy"
)

// startDebug serves the gRPC debug API on its Unix socket, and feeds it the
// same decision records the audit log writes.
func (a *Agent) startDebug(ctx context.Context) error {
	if a.cfg.DebugSocket == "off" {
		return nil
	}
	b := &backend{a: a, Broadcaster: debugapi.NewBroadcaster(debugapi.DefaultKeep)}
	sub, err := a.audit.Subscribe()
	if err != nil {
		return fmt.Errorf("subscribe to decisions: %w", err)
	}
	go func() {
		defer sub.Close()
		for {
			select {
			case <-ctx.Done():
				return
			case r, ok := <-sub.C():
				if !ok {
					return
				}
				b.Publish(decisionRecord(&r))
			}
		}
	}()
	ln, err := debugapi.Listen(a.cfg.DebugSocket)
	if err != nil {
		return fmt.Errorf("debug socket: %w", err)
	}
	go func() {
		if err := debugapi.ServeListener(ctx, ln, b); err != nil {
			a.log.Error("debug API stopped", "error", err)
		}
	}()
	return nil
}

func decisionRecord(r *audit.Record) *debugv1.DecisionRecord {
	rule := int32(-1)
	if n, err := strconv.Atoi(r.Rule); err == nil {
		rule = int32(n)
	}
	src := r.SourceAddr
	if i := strings.LastIndexByte(src, ':'); i > 0 {
		src = strings.TrimPrefix(strings.Trim(src[:i], "[]"), "::ffff:")
	}
	return &debugv1.DecisionRecord{
		Time: timestamppb.New(r.Time), Decision: string(r.Decision), Reason: r.Reason,
		Policy: r.Policy, Rule: rule, Mode: string(r.Mode), Source: r.Source, SourceIp: src,
		Destination: r.Workload, Port: uint32(r.Port), Method: r.Method, Path: r.Path,
		Issuer: r.Issuer, Tenant: r.Tenant, Oid: r.ObjectID, Sub: r.Subject, Azp: r.ClientID,
		Status: uint32(r.Status), Protocol: r.Protocol,
	}
}

// backend implements debugapi.Backend over a running agent. Every method
// only reads.
type backend struct {
	a *Agent
	*debugapi.Broadcaster
}

func (b *backend) Status(ctx context.Context) (*debugv1.GetStatusResponse, error) {
	a := b.a
	dp := &debugv1.DatapathStatus{State: debugapi.DatapathAttached, PinPath: a.dp.PinDir()}
	var failing []string
	open := 0
	for _, w := range a.enforcer.Workloads() {
		if w.Enrolled {
			dp.AttachedWorkloads++
		}
		if w.Enrolled || w.LastError != "" {
			dp.EnrolledWorkloads++
		}
		if w.LastError != "" {
			failing = append(failing, w.Workload.Key())
			if !w.Enrolled && !w.Closed {
				open++
			}
		}
	}
	if len(failing) > 0 {
		dp.State, dp.Message = debugapi.DatapathDegraded, failingMessage(failing, open)
	}
	st := a.store.Stats()
	ps := &debugv1.PolicySetStatus{Generation: st.Generation, Policies: uint32(st.Policies), Rules: uint32(st.Rules)}
	if !st.LastChange.IsZero() {
		ps.UpdatedAt, ps.Age = timestamppb.New(st.LastChange), durationpb.New(time.Since(st.LastChange))
	}
	if err := a.policyLastError(); err != nil {
		ps.LastError = err.Error()
	}
	resp := &debugv1.GetStatusResponse{
		Version: Version, Commit: commit(), NodeName: a.cfg.NodeName, Mode: string(a.cfg.Mode),
		StartTime: timestamppb.New(a.started), Uptime: durationpb.New(time.Since(a.started)),
		Datapath: dp, PolicySet: ps, Ready: true,
	}
	if err := a.Ready(); err != nil {
		resp.Ready, resp.NotReady = false, err.Error()
	}
	for _, is := range a.tokens.Issuers() {
		h := &debugv1.IssuerHealth{Name: is.Ref, Healthy: true}
		for _, s := range is.Sources {
			h.KeyCount += uint32(len(s.KeyIDs))
			if !s.HasKeys || s.Stale {
				h.Healthy = false
			}
			if s.LastError != "" {
				h.LastError = s.LastError
			}
			if s.HasKeys && (h.JwksAge == nil || s.KeySetAge > h.JwksAge.AsDuration()) {
				h.JwksAge = durationpb.New(s.KeySetAge)
			}
		}
		resp.Issuers = append(resp.Issuers, h)
	}
	return resp, nil
}

// failingMessage says which workloads (keys, sorted) are failing to enrol,
// naming at most a few, and how many of them are not captured at all
// (their connections reach the app unchecked).
func failingMessage(keys []string, notCaptured int) string {
	const show = 5
	noun := "workloads"
	if len(keys) == 1 {
		noun = "workload"
	}
	named := strings.Join(keys[:min(len(keys), show)], ", ")
	if len(keys) > show {
		named += fmt.Sprintf(" and %d more", len(keys)-show)
	}
	open := ""
	if notCaptured > 0 {
		open = fmt.Sprintf(", %d not captured", notCaptured)
	}
	return fmt.Sprintf("%d %s failing to enrol%s: %s (portcullis workloads says why)", len(keys), noun, open, named)
}

func (b *backend) Workloads(ctx context.Context) ([]*debugv1.Workload, error) {
	var out []*debugv1.Workload
	for _, s := range b.a.enforcer.Workloads() {
		w := s.Workload
		pw := &debugv1.Workload{
			Namespace: w.Namespace, Name: w.Name, Uid: w.UID, ServiceAccount: w.SA(),
			Identity: s.Identity, IdentityId: uint32(s.ID), ClientId: w.ClientID,
			NetnsPath: w.NetnsPath, CgroupPath: w.CgroupPath, Labels: w.Labels,
			AttachError: s.LastError,
		}
		for _, ip := range w.IPs {
			pw.Ips = append(pw.Ips, ip.String())
		}
		pw.LocallyAccelerated = s.Enrolled && s.Accelerated
		switch {
		case s.Excluded != identity.NotExcluded:
			pw.AttachState = "excluded: " + s.Excluded.String()
		case s.Enrolled:
			var q []string
			if s.Ports.Mode == bpf.CaptureAllExcept {
				q = append(q, "all ports except listed")
			}
			if s.Accelerated {
				q = append(q, "locally accelerated")
			}
			pw.AttachState = "attached"
			if len(q) > 0 {
				pw.AttachState += " (" + strings.Join(q, ", ") + ")"
			}
		case s.LastError != "" && s.Closed:
			pw.AttachState = "error (capture closed)"
		case s.LastError != "":
			pw.AttachState = "error (not captured)"
		case w.NetnsPath == "":
			pw.AttachState = "remote"
		default:
			pw.AttachState = "not selected"
		}
		for _, p := range s.Ports.Ports {
			pw.CapturedPorts = append(pw.CapturedPorts, uint32(p))
		}
		out = append(out, pw)
	}
	return out, nil
}

func (b *backend) Policies(ctx context.Context) (*debugv1.ListPoliciesResponse, error) {
	set := b.a.engine.Set()
	resp := &debugv1.ListPoliciesResponse{Generation: b.a.store.Stats().Generation}
	if set == nil {
		return resp, nil
	}
	ws := b.a.enforcer.Workloads()
	for _, p := range set.Summaries() {
		ns, name, _ := strings.Cut(p.Key, "/")
		pp := &debugv1.Policy{Namespace: ns, Name: name, Action: "Allow", Mode: "Enforce", Selector: p.Selector, Rules: uint32(p.Rules), Source: string(b.a.cfg.Mode)}
		if p.Deny {
			pp.Action = "Deny"
		}
		if p.Audit {
			pp.Mode = "Audit"
		}
		for _, w := range ws {
			if w.Workload.Namespace == ns && set.Selects(p.Key, policy.Workload{Namespace: ns, Labels: w.Workload.Labels}) {
				pp.SelectedWorkloads = append(pp.SelectedWorkloads, w.Workload.Key())
			}
		}
		resp.Policies = append(resp.Policies, pp)
	}
	return resp, nil
}

func (b *backend) Issuers(ctx context.Context) ([]*debugv1.Issuer, error) {
	set := b.a.engine.Set()
	specs := map[string]policy.Issuer{}
	if set != nil {
		for _, is := range set.Issuers() {
			specs[is.Ref] = is
		}
	}
	var out []*debugv1.Issuer
	for _, is := range b.a.tokens.Issuers() {
		for _, s := range is.Sources {
			pi := &debugv1.Issuer{Name: is.Ref, Issuer: s.Issuer, JwksUri: s.JWKSURI, KeyIds: s.KeyIDs, LastError: s.LastError, Healthy: s.HasKeys && !s.Stale}
			if sp, ok := specs[is.Ref]; ok {
				if sp.Spec.AzureAD != nil {
					pi.Kind, pi.Audiences = "azureAD", sp.Spec.AzureAD.Audiences
				} else if sp.Spec.OIDC != nil {
					pi.Kind, pi.Audiences = "oidc", sp.Spec.OIDC.Audiences
				}
			}
			if s.HasKeys {
				pi.JwksFetchedAt, pi.JwksAge = timestamppb.New(s.FetchedAt), durationpb.New(s.KeySetAge)
			}
			if !s.NextRefresh.IsZero() {
				pi.NextRefresh = timestamppb.New(s.NextRefresh)
			}
			if s.LastError != "" && !s.LastAttempt.IsZero() {
				pi.LastErrorAt = timestamppb.New(s.LastAttempt)
			}
			out = append(out, pi)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (b *backend) Explain(ctx context.Context, req *debugv1.ExplainRequest) (*debugv1.ExplainResponse, error) {
	a := b.a
	set := a.engine.Set()
	if set == nil {
		return nil, status.Error(codes.FailedPrecondition, "no policy set in force")
	}
	env := debugapi.ExplainEnv{TrustDomain: a.cfg.TrustDomain}
	if w, ok := a.enforcer.Workload(req.GetWorkload()); ok {
		env.Labels, env.DefaultDeny = w.Policy.Labels, w.NamespaceEnforced
	} else {
		return nil, status.Errorf(codes.NotFound, "workload %s is not on this node", req.GetWorkload())
	}
	// The caller's client ID, as the live path would learn it: from the
	// workload with that identity.
	if ns, sa, ok := strings.Cut(req.GetSource(), "/"); ok {
		for _, w := range a.enforcer.Workloads() {
			if w.Workload.Namespace == ns && w.Workload.SA() == sa && w.Workload.ClientID != "" {
				env.SourceClientID = w.Workload.ClientID
				break
			}
		}
	}
	env, err := debugapi.ResolveToken(ctx, set, a.tokens, req, env)
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "%v", err)
	}
	return debugapi.Explain(set, req, env), nil
}

func (b *backend) BPFMaps(ctx context.Context) (*debugv1.DumpBPFMapsResponse, error) {
	dp := b.a.dp
	resp := &debugv1.DumpBPFMapsResponse{}
	pods, err := dp.Pods()
	if err != nil {
		return nil, fmt.Errorf("enrolled pods: %w", err)
	}
	byKey := map[string]enforcer.WorkloadStatus{}
	for _, w := range b.a.enforcer.Workloads() {
		byKey[w.Workload.Key()] = w
	}
	for _, p := range pods {
		ep := &debugv1.EnrolledPod{Workload: p.Key, NetnsCookie: p.NetnsCookie, ListenerPort: uint32(dp.ListenerPort())}
		if w, ok := byKey[p.Key]; ok {
			ep.CgroupId, ep.IdentityId = w.CgroupID, uint32(w.ID)
		}
		for _, port := range p.Ports.Ports {
			ep.Ports = append(ep.Ports, uint32(port))
		}
		resp.Enrolled = append(resp.Enrolled, ep)
	}
	ids := map[identity.ID]string{}
	for _, w := range byKey {
		ids[w.ID] = w.Identity
	}
	conns, err := dp.Connections()
	if err != nil {
		return nil, fmt.Errorf("connections: %w", err)
	}
	for _, c := range conns {
		resp.Sockets = append(resp.Sockets, &debugv1.SocketRecord{
			Local: c.Caller.String(), Remote: c.Callee.String(), CgroupId: c.CgroupID,
			IdentityId: c.Identity, Identity: ids[identity.ID(c.Identity)],
		})
	}
	cs, err := dp.Counters()
	if err != nil {
		return nil, fmt.Errorf("counters: %w", err)
	}
	for _, c := range bpf.Counters() {
		resp.Counters = append(resp.Counters, &debugv1.Counter{Name: c.String(), Value: cs[c]})
	}
	return resp, nil
}

func (b *backend) InspectToken(ctx context.Context, token string) (*debugv1.InspectTokenResponse, error) {
	return debugapi.InspectToken(ctx, b.a.tokens, token), nil
}

// commit is the VCS revision the binary was built from, when recorded.
func commit() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" {
				return s.Value
			}
		}
	}
	return ""
}
