package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"

	"github.com/portcullis-mesh/portcullis/agent/debugapi"
	"github.com/portcullis-mesh/portcullis/agent/debugapi/debugv1"
)

// version is set at link time (-ldflags "-X main.version=v1.2.3"); when
// empty the module version from the build info is used.
var version string

func clientVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += " (" + s.Value[:12] + ")"
		}
	}
	return v
}

// unary wraps a call to the agent bounded by --timeout.
func unary[Resp any](ctx context.Context, a *app, call func(context.Context, debugv1.DebugClient) (Resp, error)) (Resp, error) {
	var zero Resp
	c, err := a.client()
	if err != nil {
		return zero, err
	}
	ctx, cancel := a.callContext(ctx)
	defer cancel()
	return call(ctx, c)
}

func (a *app) statusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Agent version, uptime, mode and the health of datapath, issuers and policies",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := unary(cmd.Context(), a, func(ctx context.Context, c debugv1.DebugClient) (*debugv1.GetStatusResponse, error) {
				return c.GetStatus(ctx, &debugv1.GetStatusRequest{})
			})
			if err != nil {
				return err
			}
			if err := a.printMessage(st, func(w io.Writer) error { return a.statusTable(w, st) }); err != nil {
				return err
			}
			if !debugapi.Healthy(st) {
				return &exitError{code: exitDegraded}
			}
			return nil
		},
	}
}

func (a *app) statusTable(w io.Writer, st *debugv1.GetStatusResponse) error {
	agent := cell(st.GetVersion())
	if st.GetCommit() != "" {
		agent += " (" + st.GetCommit() + ")"
	}
	fmt.Fprintf(w, "Agent:\t%s\n", agent)
	fmt.Fprintf(w, "Node:\t%s\n", cell(st.GetNodeName()))
	fmt.Fprintf(w, "Mode:\t%s\n", cell(st.GetMode()))
	fmt.Fprintf(w, "Uptime:\t%s\n", durationCell(st.GetUptime()))
	ready := "yes"
	if !st.GetReady() {
		ready = "no"
		if st.GetNotReady() != "" {
			ready += ": " + oneLine(st.GetNotReady())
		}
	}
	fmt.Fprintf(w, "Ready:\t%s\n", a.paintBool(st.GetReady(), ready, ready))

	dp := st.GetDatapath()
	state := cell(dp.GetState())
	state = a.paintBool(dp.GetState() == debugapi.DatapathAttached, state, state)
	fmt.Fprintf(w, "Datapath:\t%s, %d/%d workloads attached, pins %s\n", state,
		dp.GetAttachedWorkloads(), dp.GetEnrolledWorkloads(), cell(dp.GetPinPath()))
	if dp.GetMessage() != "" {
		fmt.Fprintf(w, "\t%s\n", oneLine(dp.GetMessage()))
	}

	ps := st.GetPolicySet()
	fmt.Fprintf(w, "Policy set:\tgeneration %d, %d policies, %d rules, updated %s ago\n",
		ps.GetGeneration(), ps.GetPolicies(), ps.GetRules(), durationCell(ps.GetAge()))
	if ps.GetLastError() != "" {
		fmt.Fprintf(w, "\t%s %s\n", a.paint(ansiRed, "last error:"), oneLine(ps.GetLastError()))
	}

	healthy := 0
	for _, is := range st.GetIssuers() {
		if is.GetHealthy() {
			healthy++
		}
	}
	fmt.Fprintf(w, "Issuers:\t%s\n", a.paintBool(healthy == len(st.GetIssuers()),
		fmt.Sprintf("%d/%d healthy", healthy, len(st.GetIssuers())),
		fmt.Sprintf("%d/%d healthy", healthy, len(st.GetIssuers()))))
	for _, is := range st.GetIssuers() {
		line := is.GetName() + ": no key set"
		if is.GetJwksAge() != nil {
			line = fmt.Sprintf("%s: %d keys, key set %s old", is.GetName(), is.GetKeyCount(), age(is.GetJwksAge().AsDuration()))
		}
		if is.GetLastError() != "" {
			line += ", last error: " + oneLine(is.GetLastError())
		}
		fmt.Fprintf(w, "\t%s %s\n", a.paintBool(is.GetHealthy(), "ok  ", "FAIL"), line)
	}
	return nil
}

func (a *app) workloadsCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "workloads",
		Aliases: []string{"workload", "wl"},
		Short:   "Pods on this node: identity, addresses, captured ports, netns, cgroup, attach state",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := unary(cmd.Context(), a, func(ctx context.Context, c debugv1.DebugClient) (*debugv1.ListWorkloadsResponse, error) {
				return c.ListWorkloads(ctx, &debugv1.ListWorkloadsRequest{})
			})
			if err != nil {
				return err
			}
			err = a.printMessage(r, func(w io.Writer) error {
				fmt.Fprintf(w, "WORKLOAD\tIDENTITY\tID\tIPS\tPORTS\t%s\tNETNS\tCGROUP\n", a.head("STATE"))
				for _, wl := range r.GetWorkloads() {
					state := cell(wl.GetAttachState())
					switch {
					case strings.HasPrefix(state, "attached"):
						state = a.paint(ansiGreen, state)
					case strings.HasPrefix(state, "error"):
						state = a.paint(ansiRed, state)
					default:
						state = a.paint(ansiDefault, state)
					}
					fmt.Fprintf(w, "%s/%s\t%s\t%d\t%s\t%s\t%s\t%s\t%s\n",
						wl.GetNamespace(), wl.GetName(), cell(wl.GetIdentity()), wl.GetIdentityId(),
						list(wl.GetIps()), ports(wl.GetCapturedPorts()), state,
						cell(wl.GetNetnsPath()), cell(wl.GetCgroupPath()))
				}
				for _, wl := range r.GetWorkloads() {
					if wl.GetAttachError() != "" {
						fmt.Fprintf(w, "\n%s/%s: %s\n", wl.GetNamespace(), wl.GetName(), oneLine(wl.GetAttachError()))
					}
				}
				return nil
			})
			if err != nil {
				return err
			}
			// The same rule as status's "degraded".
			for _, wl := range r.GetWorkloads() {
				if wl.GetAttachError() != "" {
					return &exitError{code: exitDegraded}
				}
			}
			return nil
		},
	}
}

func (a *app) policiesCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "policies",
		Aliases: []string{"policy", "pol"},
		Short:   "Access policies of the running policy set",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := unary(cmd.Context(), a, func(ctx context.Context, c debugv1.DebugClient) (*debugv1.ListPoliciesResponse, error) {
				return c.ListPolicies(ctx, &debugv1.ListPoliciesRequest{})
			})
			if err != nil {
				return err
			}
			return a.printMessage(r, func(w io.Writer) error {
				fmt.Fprintf(w, "Policy set generation %d\n\n", r.GetGeneration())
				fmt.Fprintf(w, "POLICY\tACTION\t%s\tSELECTOR\tRULES\tWORKLOADS\tSOURCE\n", a.head("MODE"))
				for _, p := range r.GetPolicies() {
					mode := cell(p.GetMode())
					if strings.EqualFold(mode, "audit") {
						mode = a.paint(ansiYellow, mode)
					} else {
						mode = a.paint(ansiDefault, mode)
					}
					fmt.Fprintf(w, "%s/%s\t%s\t%s\t%s\t%d\t%s\t%s\n",
						p.GetNamespace(), p.GetName(), cell(p.GetAction()), mode,
						cell(p.GetSelector()), p.GetRules(), list(p.GetSelectedWorkloads()), cell(p.GetSource()))
				}
				return nil
			})
		},
	}
}

func (a *app) issuersCmd() *cobra.Command {
	return &cobra.Command{
		Use:     "issuers",
		Aliases: []string{"issuer"},
		Short:   "Token issuers: key sets, their age, key IDs, last error, next refresh",
		Args:    noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := unary(cmd.Context(), a, func(ctx context.Context, c debugv1.DebugClient) (*debugv1.ListIssuersResponse, error) {
				return c.ListIssuers(ctx, &debugv1.ListIssuersRequest{})
			})
			if err != nil {
				return err
			}
			return a.printMessage(r, func(w io.Writer) error {
				fmt.Fprintf(w, "NAME\tKIND\t%s\tKEYS\tJWKS AGE\tNEXT REFRESH\tISSUER\tLAST ERROR\n", a.head("HEALTHY"))
				for _, is := range r.GetIssuers() {
					lastErr := oneLine(is.GetLastError())
					if is.GetLastErrorAt() != nil && is.GetLastError() != "" {
						lastErr = "(" + a.relative(is.GetLastErrorAt()) + ") " + lastErr
					}
					fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
						is.GetName(), cell(is.GetKind()), a.paintBool(is.GetHealthy(), "yes", "no"),
						list(is.GetKeyIds()), durationCell(is.GetJwksAge()), a.relative(is.GetNextRefresh()),
						cell(is.GetIssuer()), lastErr)
				}
				return nil
			})
		},
	}
}

func (a *app) bpfCmd() *cobra.Command {
	bpf := &cobra.Command{
		Use:   "bpf",
		Short: "eBPF datapath state",
	}
	bpf.AddCommand(&cobra.Command{
		Use:   "maps",
		Short: "Dump the datapath's maps: enrolled pods, socket→identity records, counters",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			r, err := unary(cmd.Context(), a, func(ctx context.Context, c debugv1.DebugClient) (*debugv1.DumpBPFMapsResponse, error) {
				return c.DumpBPFMaps(ctx, &debugv1.DumpBPFMapsRequest{})
			})
			if err != nil {
				return err
			}
			return a.printMessage(r, func(w io.Writer) error {
				fmt.Fprintf(w, "Enrolled pods (%d)\n", len(r.GetEnrolled()))
				fmt.Fprintln(w, "NETNS COOKIE\tCGROUP ID\tIDENTITY ID\tWORKLOAD\tLISTENER\tPORTS")
				for _, e := range r.GetEnrolled() {
					fmt.Fprintf(w, "%d\t%d\t%d\t%s\t%d\t%s\n", e.GetNetnsCookie(), e.GetCgroupId(),
						e.GetIdentityId(), cell(e.GetWorkload()), e.GetListenerPort(), ports(e.GetPorts()))
				}
				fmt.Fprintf(w, "\nSocket → identity records (%d)\n", len(r.GetSockets()))
				fmt.Fprintln(w, "LOCAL\tREMOTE\tSOCKET COOKIE\tNETNS COOKIE\tCGROUP ID\tIDENTITY ID\tIDENTITY")
				for _, s := range r.GetSockets() {
					fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%d\t%s\n", s.GetLocal(), s.GetRemote(), s.GetSocketCookie(),
						s.GetNetnsCookie(), s.GetCgroupId(), s.GetIdentityId(), cell(s.GetIdentity()))
				}
				fmt.Fprintf(w, "\nCounters\n")
				fmt.Fprintln(w, "NAME\tVALUE")
				for _, c := range r.GetCounters() {
					fmt.Fprintf(w, "%s\t%d\n", c.GetName(), c.GetValue())
				}
				return nil
			})
		},
	})
	return bpf
}

func (a *app) versionCmd() *cobra.Command {
	clientOnly := false
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Versions of this CLI and of the agent",
		Args:  noArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			type agentVersion struct {
				Version string `json:"version"`
				Commit  string `json:"commit,omitempty"`
			}
			v := struct {
				Client string        `json:"client"`
				Agent  *agentVersion `json:"agent,omitempty"`
			}{Client: clientVersion()}
			var callErr error
			if !clientOnly {
				st, err := unary(cmd.Context(), a, func(ctx context.Context, c debugv1.DebugClient) (*debugv1.GetStatusResponse, error) {
					return c.GetStatus(ctx, &debugv1.GetStatusRequest{})
				})
				if err != nil {
					callErr = err
				} else {
					v.Agent = &agentVersion{Version: st.GetVersion(), Commit: st.GetCommit()}
				}
			}
			switch a.output {
			case "json", "yaml":
				b, err := json.MarshalIndent(v, "", "  ")
				if err != nil {
					return fmt.Errorf("encode version: %w", err)
				}
				b = append(b, '\n')
				if a.output == "yaml" {
					if b, err = yaml.JSONToYAML(b); err != nil {
						return fmt.Errorf("format yaml: %w", err)
					}
				}
				if _, err := a.out.Write(b); err != nil {
					return err
				}
			default:
				fmt.Fprintf(a.out, "Client: %s\n", v.Client)
				if v.Agent != nil {
					agent := v.Agent.Version
					if v.Agent.Commit != "" {
						agent += " (" + v.Agent.Commit + ")"
					}
					fmt.Fprintf(a.out, "Agent:  %s\n", agent)
				}
			}
			return callErr
		},
	}
	cmd.Flags().BoolVar(&clientOnly, "client", false, "print only the CLI's version, without asking the agent")
	return cmd
}
