package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/portcullis-mesh/portcullis/agent/debugapi/debugv1"
)

func (a *app) tokenCmd() *cobra.Command {
	tok := &cobra.Command{
		Use:   "token",
		Short: "Bearer token tools",
	}
	tok.AddCommand(&cobra.Command{
		Use:   "inspect [TOKEN|-]",
		Short: "Decode a token and validate it against the agent's live issuers",
		Long: `inspect sends the token to the local agent only, over its debug socket; the
agent validates it against the live issuers and never logs or forwards it.
With no argument or "-" the token is read from standard input, which keeps it
out of the process list and the shell history.

Exit code 1 when the token is not valid.`,
		Example: `  portcullis token inspect - < token.txt
  az account get-access-token --resource api://orders --query accessToken -o tsv | portcullis token inspect`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 {
				return usageErrorf("%s takes at most one token", cmd.CommandPath())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			raw := "-"
			if len(args) == 1 {
				raw = args[0]
			}
			if raw == "-" {
				var err error
				if raw, err = a.readInput("-"); err != nil {
					return err
				}
			}
			r, err := unary(cmd.Context(), a, func(ctx context.Context, c debugv1.DebugClient) (*debugv1.InspectTokenResponse, error) {
				return c.InspectToken(ctx, &debugv1.InspectTokenRequest{Token: raw})
			})
			if err != nil {
				return err
			}
			if err := a.printMessage(r, func(w io.Writer) error { return a.tokenTable(w, r) }); err != nil {
				return err
			}
			if !r.GetVerdict().GetValid() {
				return &exitError{code: exitRefused}
			}
			return nil
		},
	})
	return tok
}

func (a *app) tokenTable(w io.Writer, r *debugv1.InspectTokenResponse) error {
	fmt.Fprintf(w, "Verdict:\t%s\n", a.verdictLine(r.GetVerdict()))
	fmt.Fprintf(w, "Header:\talg=%s kid=%s typ=%s\n", cell(r.GetAlg()), cell(r.GetKid()), cell(r.GetTyp()))
	claims := r.GetClaims().AsMap()
	if len(claims) == 0 {
		fmt.Fprintf(w, "Claims:\tnone decoded\n")
		return nil
	}
	fmt.Fprintf(w, "Claims:\n")
	keys := make([]string, 0, len(claims))
	for k := range claims {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := claims[k]
		var s string
		if str, ok := v.(string); ok {
			s = str
		} else {
			b, err := json.Marshal(v)
			if err != nil {
				return fmt.Errorf("encode claim %s: %w", k, err)
			}
			s = string(b)
		}
		if f, ok := v.(float64); ok && (k == "exp" || k == "nbf" || k == "iat") {
			s += " (" + time.Unix(int64(f), 0).UTC().Format(time.RFC3339) + ")"
		}
		fmt.Fprintf(w, "  %s\t%s\n", k, oneLine(s))
	}
	return nil
}
