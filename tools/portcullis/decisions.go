package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"sigs.k8s.io/yaml"

	"github.com/portcullis-mesh/portcullis/agent/debugapi"
	"github.com/portcullis-mesh/portcullis/agent/debugapi/debugv1"
)

// timeLayout is how decision times are printed: UTC with milliseconds, as
// in the audit log.
const timeLayout = "2006-01-02T15:04:05.000Z"

func (a *app) decisionsCmd() *cobra.Command {
	var (
		req      debugv1.TailDecisionsRequest
		denyOnly bool
	)
	cmd := &cobra.Command{
		Use:     "decisions",
		Aliases: []string{"decision", "tail"},
		Short:   "Recent decisions (the audit log's records); --follow streams new ones",
		Example: `  portcullis decisions --deny-only --workload shop/orders-api
  portcullis decisions -f --source shop/frontend -o json`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if denyOnly {
				if req.Decision != "" && !strings.EqualFold(req.Decision, "deny") {
					return usageErrorf("--deny-only and --decision %s contradict each other", req.Decision)
				}
				req.Decision = "deny"
			}
			// Check the filters here too, to answer a typo without a
			// round trip to the agent.
			if _, err := debugapi.NewFilter(&req); err != nil {
				return &exitError{code: exitUsage, err: err}
			}
			return a.tailDecisions(cmd.Context(), &req)
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&req.Follow, "follow", "f", false, "keep streaming new decisions until interrupted")
	f.BoolVar(&denyOnly, "deny-only", false, "only refused requests (same as --decision deny)")
	f.StringVar(&req.Decision, "decision", "", "only this decision: allow or deny")
	f.StringVar(&req.Reason, "reason", "", "only this reason (e.g. expired, no_matching_rule)")
	f.StringVar(&req.Workload, "workload", "", "only this destination: namespace/pod, or namespace/ for a whole namespace")
	f.StringVar(&req.Source, "source", "", "only this caller: namespace/serviceaccount, a SPIFFE ID or anonymous")
	f.Uint32Var(&req.Limit, "limit", 0, "at most this many recent decisions first (0: all the agent keeps)")
	return cmd
}

func (a *app) tailDecisions(ctx context.Context, req *debugv1.TailDecisionsRequest) error {
	c, err := a.client()
	if err != nil {
		return err
	}
	// Only a bounded tail is bounded by --timeout; --follow runs until
	// interrupted.
	cancel := context.CancelFunc(func() {})
	if !req.GetFollow() {
		ctx, cancel = a.callContext(ctx)
	}
	defer cancel()
	stream, err := c.TailDecisions(ctx, req)
	if err != nil {
		return err
	}
	n := 0
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			// Interrupting --follow is how it ends.
			if req.GetFollow() && status.Code(err) == codes.Canceled && ctx.Err() != nil {
				return nil
			}
			return err
		}
		if d := r.GetDroppedBefore(); d > 0 {
			fmt.Fprintf(a.err, "portcullis: %d decisions skipped: this client reads too slowly\n", d)
		}
		if err := a.printDecision(r); err != nil {
			return err
		}
		n++
	}
	if n == 0 && a.output == "table" {
		fmt.Fprintln(a.err, "no decisions match")
	}
	return nil
}

// printDecision writes one record as a line (table), a JSON line, or a
// YAML document, so that --follow output can be piped as it comes.
func (a *app) printDecision(r *debugv1.DecisionRecord) error {
	switch a.output {
	case "json":
		b, err := jsonOf(r, false)
		if err != nil {
			return err
		}
		_, err = a.out.Write(b)
		return err
	case "yaml":
		b, err := jsonOf(r, false)
		if err != nil {
			return err
		}
		y, err := yaml.JSONToYAML(b)
		if err != nil {
			return fmt.Errorf("format yaml: %w", err)
		}
		_, err = fmt.Fprintf(a.out, "---\n%s", y)
		return err
	}
	_, err := fmt.Fprintln(a.out, a.decisionLine(r))
	return err
}

func (a *app) decisionLine(r *debugv1.DecisionRecord) string {
	t := "-"
	if r.GetTime() != nil {
		t = r.GetTime().AsTime().UTC().Format(timeLayout)
	}
	var b strings.Builder
	audit := strings.EqualFold(r.GetMode(), "audit")
	dec := fmt.Sprintf("%-5s", strings.ToUpper(r.GetDecision()))
	if audit {
		// Forwarded whatever the decision: not the red of a refusal.
		dec = a.paint(ansiYellow, dec)
	} else {
		dec = a.paintDecision(dec)
	}
	fmt.Fprintf(&b, "%s  %s  %-18s  %s → %s:%d  %s %s",
		t, dec, cell(r.GetReason()),
		cell(r.GetSource()), cell(r.GetDestination()), r.GetPort(), cell(r.GetMethod()), cell(r.GetPath()))
	if r.GetStatus() != 0 {
		fmt.Fprintf(&b, "  %d", r.GetStatus())
	}
	if r.GetPolicy() != "" {
		fmt.Fprintf(&b, "  policy %s rule %d", r.GetPolicy(), r.GetRule())
	}
	if audit {
		b.WriteString("  " + a.paint(ansiYellow, "[audit mode: forwarded]"))
	}
	var who []string
	for _, kv := range [][2]string{{"iss", r.GetIssuer()}, {"tid", r.GetTenant()}, {"appid", r.GetAppid()}, {"azp", r.GetAzp()}, {"oid", r.GetOid()}, {"sub", r.GetSub()}} {
		if kv[1] != "" {
			who = append(who, kv[0]+"="+kv[1])
		}
	}
	if len(who) > 0 {
		b.WriteString("  " + strings.Join(who, " "))
	}
	return b.String()
}
