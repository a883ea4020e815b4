package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/portcullis-mesh/portcullis/agent/debugapi"
	"github.com/portcullis-mesh/portcullis/agent/debugapi/debugv1"
)

// explainFlags are the flags of explain beyond the request itself.
type explainFlags struct {
	tokenFile string
	claims    string
	headers   []string
	// Offline mode.
	policies    []string
	issuers     []string
	labels      map[string]string
	issuerRef   string
	trustDomain string
	enforced    bool
}

func (a *app) explainCmd() *cobra.Command {
	var (
		req debugv1.ExplainRequest
		fl  explainFlags
	)
	cmd := &cobra.Command{
		Use:   "explain --workload NS/POD --port PORT [flags]",
		Short: "Why a request would be allowed or refused, with every candidate rule (sends no request)",
		Long: `explain evaluates a request against the policies without sending it: the
decision, the rule that decided, and for every candidate rule whether it
matched and, if not, the first field that did not.

Online (default) it asks the agent, which validates a token against the live
issuers and knows the pods' labels. Offline (--policies) it loads policy and
issuer files, so a policy can be tried before it is applied; a token is then
decoded WITHOUT checking its signature, the pod's labels come from
--labels, and --namespace-enforced says whether its namespace denies by
default (portcullis.dev/enforce=enabled), which the files do not tell.

Exit code 1 when the request would be refused.`,
		Example: `  portcullis explain --workload shop/orders-api --port 8080 --method POST --path /orders \
      --source shop/frontend --token-file /tmp/token
  portcullis explain --workload shop/orders-api --port 8080 --path /orders \
      --claims '{"iss":"https://login.microsoftonline.com/<tid>/v2.0","roles":["Orders.Read"]}' \
      --policies ./policies --issuers ./issuers.yaml --labels app=orders-api`,
		Args: noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := a.completeExplain(cmd, &req, &fl); err != nil {
				return err
			}
			var (
				resp *debugv1.ExplainResponse
				err  error
			)
			if len(fl.policies) > 0 {
				resp, err = a.explainOffline(cmd.Context(), &req, &fl)
			} else {
				resp, err = unary(cmd.Context(), a, func(ctx context.Context, c debugv1.DebugClient) (*debugv1.ExplainResponse, error) {
					return c.Explain(ctx, &req)
				})
			}
			if err != nil {
				return err
			}
			if err := a.printMessage(resp, func(w io.Writer) error { return a.explainTable(w, resp) }); err != nil {
				return err
			}
			if resp.GetDecision() != "allow" {
				return &exitError{code: exitRefused}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.StringVar(&req.Workload, "workload", "", "destination pod, namespace/name (required)")
	f.Uint32Var(&req.Port, "port", 0, "destination port (required)")
	f.StringVar(&req.Method, "method", "GET", "HTTP method")
	f.StringVar(&req.Path, "path", "/", "request path, without the query")
	f.StringVar(&req.Host, "host", "", "Host header / :authority")
	f.StringVar(&req.Source, "source", "", "calling workload namespace/serviceaccount (default anonymous)")
	f.StringVar(&req.SourceClientId, "source-client-id", "", "Entra Workload ID client ID of the caller (default: the agent's knowledge of its service account)")
	f.StringVar(&req.Token, "token", "", "bearer token (visible in the process list: prefer --token-file)")
	f.StringVar(&fl.tokenFile, "token-file", "", "file holding the bearer token, - for standard input")
	f.StringVar(&fl.claims, "claims", "", "claims as a JSON object, taken as a valid token's (@FILE reads a file)")
	f.StringArrayVar(&fl.headers, "header", nil, "request header NAME=VALUE for CEL expressions (repeatable)")
	f.StringArrayVar(&fl.policies, "policies", nil, "offline: policy file or directory of *.yaml (repeatable)")
	f.StringArrayVar(&fl.issuers, "issuers", nil, "offline: Issuer/ClusterIssuer file (repeatable)")
	f.StringToStringVar(&fl.labels, "labels", nil, "offline: labels of the destination pod, k=v,...")
	f.StringVar(&fl.issuerRef, "issuer-ref", "", "offline: the issuer taken to accept the token (default: matched by iss/tid)")
	f.StringVar(&fl.trustDomain, "trust-domain", "", "offline: SPIFFE trust domain (default cluster.local)")
	f.BoolVar(&fl.enforced, "namespace-enforced", false, "offline: the workload's namespace has portcullis.dev/enforce=enabled (default deny)")
	_ = cmd.MarkFlagRequired("workload")
	_ = cmd.MarkFlagRequired("port")
	cmd.MarkFlagsMutuallyExclusive("token", "token-file", "claims")
	return cmd
}

// completeExplain reads the token or claims and checks the request.
func (a *app) completeExplain(cmd *cobra.Command, req *debugv1.ExplainRequest, fl *explainFlags) error {
	offline := len(fl.policies) > 0
	if !offline {
		for _, name := range []string{"issuers", "labels", "issuer-ref", "trust-domain", "namespace-enforced"} {
			if cmd.Flags().Changed(name) {
				return usageErrorf("--%s is for offline explain: give --policies too", name)
			}
		}
	}
	if fl.tokenFile != "" {
		tok, err := a.readInput(fl.tokenFile)
		if err != nil {
			return err
		}
		req.Token = tok
	}
	req.Token = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(req.Token), "Bearer "))
	if fl.claims != "" {
		raw := fl.claims
		if name, ok := strings.CutPrefix(raw, "@"); ok {
			b, err := a.readInput(name)
			if err != nil {
				return err
			}
			raw = b
		}
		var m map[string]any
		if err := json.Unmarshal([]byte(raw), &m); err != nil {
			return usageErrorf("--claims: want a JSON object: %v", err)
		}
		s, err := structpb.NewStruct(m)
		if err != nil {
			return usageErrorf("--claims: %v", err)
		}
		req.Claims = s
	}
	if len(fl.headers) > 0 {
		req.Headers = make(map[string]string, len(fl.headers))
		for _, h := range fl.headers {
			k, v, ok := strings.Cut(h, "=")
			if !ok || k == "" {
				return usageErrorf("--header %q: want NAME=VALUE", h)
			}
			req.Headers[k] = v
		}
	}
	req.Method = strings.ToUpper(req.Method)
	if err := debugapi.ValidateExplain(req); err != nil {
		return &exitError{code: exitUsage, err: err}
	}
	return nil
}

// readInput reads a whole file, or standard input for "-", trimmed.
func (a *app) readInput(name string) (string, error) {
	var (
		b   []byte
		err error
	)
	if name == "-" {
		b, err = io.ReadAll(io.LimitReader(a.in, 1<<20))
	} else {
		b, err = os.ReadFile(name)
	}
	if err != nil {
		return "", fmt.Errorf("read %s: %w", name, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func (a *app) explainTable(w io.Writer, r *debugv1.ExplainResponse) error {
	dec := a.paintDecision(r.GetDecision())
	if r.GetMode() == "audit" {
		// The reason is the audited policy's, not that of what happens.
		would := "ALLOW"
		if r.GetWouldDeny() {
			would = "DENY"
		}
		fmt.Fprintf(w, "Decision:\t%s %d (audit only: enforcing would %s %d, %s)\n", dec, r.GetStatus(),
			a.paintDecision(would), r.GetAuditStatus(), cell(r.GetReason()))
	} else {
		fmt.Fprintf(w, "Decision:\t%s %d %s\n", dec, r.GetStatus(), cell(r.GetReason()))
	}
	if r.GetTokenReason() != "" {
		fmt.Fprintf(w, "Token reason:\t%s\n", r.GetTokenReason())
	}
	if r.GetPolicy() != "" {
		fmt.Fprintf(w, "Decided by:\t%s rule %d\n", r.GetPolicy(), r.GetRule())
	} else {
		fmt.Fprintf(w, "Decided by:\tno single rule\n")
	}
	mode := cell(r.GetMode())
	if r.GetMode() == "audit" {
		mode = a.paint(ansiYellow, mode)
	}
	fmt.Fprintf(w, "Mode:\t%s\n", mode)
	captured := "yes"
	if !r.GetCaptured() {
		captured = "no: no policy selects this workload and port; the datapath does not redirect it"
	}
	fmt.Fprintf(w, "Captured:\t%s\n", captured)
	fmt.Fprintf(w, "Token:\t%s\n", a.verdictLine(r.GetToken()))
	if len(r.GetTrace()) == 0 {
		fmt.Fprintf(w, "\nNo candidate rules.\n")
		return nil
	}
	fmt.Fprintf(w, "\nCandidate rules, in evaluation order:\n")
	fmt.Fprintf(w, "POLICY\tACTION\tMODE\tRULE\t%s\tFAILED FIELD\tDETAIL\n", a.head("RESULT"))
	for _, t := range r.GetTrace() {
		res := a.paintBool(t.GetMatched(), "match", "no")
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", t.GetPolicy(), t.GetAction(), t.GetMode(), t.GetRule(),
			res, cell(t.GetFailedField()), oneLine(t.GetDetail()))
	}
	return nil
}

// verdictLine summarises a token verdict in one line.
func (a *app) verdictLine(v *debugv1.TokenVerdict) string {
	if v == nil {
		return "none"
	}
	var s string
	if v.GetReason() == debugapi.ReasonNotVerified {
		s = a.paint(ansiYellow, "unverified") + ": claims read without checking the signature (offline)"
		if v.GetIssuerRef() != "" {
			s += ", issuer " + v.GetIssuerRef()
		}
		if v.GetExpiresAt() != nil {
			s += ", expires " + v.GetExpiresAt().AsTime().UTC().Format(timeLayout) + " (" + a.relative(v.GetExpiresAt()) + ")"
		}
		return s
	}
	if v.GetValid() {
		s = a.paint(ansiGreen, "valid")
		if v.GetIssuerRef() != "" {
			s += ", accepted by issuer " + v.GetIssuerRef()
		}
	} else {
		s = a.paint(ansiRed, "not valid") + ": " + cell(v.GetReason())
	}
	if v.GetDetail() != "" {
		s += " (" + oneLine(v.GetDetail()) + ")"
	}
	if v.GetExpiresAt() != nil {
		s += ", expires " + v.GetExpiresAt().AsTime().UTC().Format(timeLayout) + " (" + a.relative(v.GetExpiresAt()) + ")"
	}
	return s
}
