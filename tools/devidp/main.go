// Command devidp runs a local, Entra ID-shaped token issuer on loopback for
// the demo, the end-to-end tests and trying Portcullis without a tenant.
//
//	devidp serve  [--listen 127.0.0.1:8400] [--tenant GUID]... [--jwks-max-age 5m]
//	devidp mint   --aud api://orders [--version 1|2] [--app] [--roles a,b] [--groups g1] [--scopes s] ...
//	devidp rotate [--keep-old]
//	devidp keys
//
// mint, rotate and keys talk to a running server (--url, default
// http://127.0.0.1:8400). Tokens carry the real Entra issuers; an agent
// trusts them only with an Issuer whose azureAD.authorityHost is the
// server's loopback URL. See package idp for the endpoints.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/portcullis-mesh/portcullis/tools/devidp/idp"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "devidp:", err)
		}
		os.Exit(2)
	}
}

const usage = `usage: devidp <command> [flags]

commands:
  serve    serve discovery documents, keys and the token endpoint on loopback
  mint     mint an access token from a running devidp
  rotate   publish a new signing key on a running devidp
  keys     list the published key IDs of a running devidp

"devidp <command> -h" lists a command's flags.
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command")
	}
	switch args[0] {
	case "serve":
		return serve(ctx, args[1:], stdout, stderr)
	case "mint":
		return mint(ctx, args[1:], stdout, stderr)
	case "rotate":
		return rotate(ctx, args[1:], stdout, stderr)
	case "keys":
		return keys(ctx, args[1:], stdout, stderr)
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

// listFlag collects a repeatable or comma-separated flag.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }
func (l *listFlag) Set(s string) error {
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			*l = append(*l, v)
		}
	}
	return nil
}

func serve(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:8400", "loopback `address` to listen on")
	var tenants listFlag
	fs.Var(&tenants, "tenant", "tenant `GUID` to serve (repeatable; default "+idp.DefaultTenant+")")
	maxAge := fs.Duration("jwks-max-age", 5*time.Minute, "Cache-Control max-age of key set responses")
	if err := fs.Parse(args); err != nil {
		return err
	}
	p, err := idp.New(idp.Options{Tenants: tenants, JWKSMaxAge: *maxAge})
	if err != nil {
		return err
	}
	ln, err := idp.Listen(*listen)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "devidp: serving tenants %s at http://%s (use it as azureAD.authorityHost)\n",
		strings.Join(p.Tenants(), ", "), ln.Addr())
	return p.Serve(ctx, ln)
}

func mint(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mint", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "http://127.0.0.1:8400", "devidp `URL`")
	var req idp.TokenRequest
	fs.StringVar(&req.Tenant, "tenant", "", "tenant `GUID` (default: the first served)")
	fs.IntVar(&req.Version, "version", 2, "access-token version, 1 or 2")
	fs.StringVar(&req.Audience, "aud", "", "audience: App ID URI or client ID (required)")
	fs.BoolVar(&req.App, "app", false, "mint an application token (client credentials) instead of a user token")
	fs.StringVar(&req.ClientID, "client-id", "", "calling application: azp (v2) / appid (v1)")
	fs.StringVar(&req.ObjectID, "oid", "", "object ID of the user or service principal")
	fs.StringVar(&req.Subject, "sub", "", "subject")
	fs.StringVar(&req.UPN, "upn", "", "user name (upn / preferred_username)")
	fs.StringVar(&req.IDType, "idtyp", "", `idtyp claim ("app" or "user")`)
	var roles, groups, scopes, wids, claims listFlag
	fs.Var(&roles, "roles", "app `roles` (comma-separated or repeated)")
	fs.Var(&groups, "groups", "group object `IDs`")
	fs.Var(&scopes, "scopes", "delegated `scopes` (scp)")
	fs.Var(&wids, "wids", "directory role template `IDs`")
	fs.BoolVar(&req.GroupOverage, "overage", false, "use the group overage form instead of groups")
	lifetime := fs.Duration("lifetime", time.Hour, "token lifetime (exp - iat)")
	fs.Var(&claims, "claim", "extra claim `name=JSON` (repeatable); a bare string value is taken as a string")
	if err := fs.Parse(args); err != nil {
		return err
	}
	req.Roles, req.Groups, req.Scopes, req.WIDs = roles, groups, scopes, wids
	req.LifetimeSeconds = int64(lifetime.Seconds())
	if len(claims) > 0 {
		req.Claims = map[string]any{}
		for _, c := range claims {
			name, val, ok := strings.Cut(c, "=")
			if !ok || name == "" {
				return fmt.Errorf("claim %q: want name=value", c)
			}
			var v any
			if err := json.Unmarshal([]byte(val), &v); err != nil {
				v = val
			}
			req.Claims[name] = v
		}
	}
	var resp struct {
		AccessToken string `json:"access_token"`
	}
	if err := call(ctx, *url+"/devidp/token", req, &resp); err != nil {
		return err
	}
	fmt.Fprintln(stdout, resp.AccessToken)
	return nil
}

func rotate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("rotate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "http://127.0.0.1:8400", "devidp `URL`")
	keepOld := fs.Bool("keep-old", false, "keep publishing the previous keys (tokens they signed stay valid)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var resp struct {
		KID string `json:"kid"`
	}
	if err := call(ctx, *url+"/devidp/rotate", map[string]bool{"keepOld": *keepOld}, &resp); err != nil {
		return err
	}
	fmt.Fprintln(stdout, resp.KID)
	return nil
}

func keys(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("keys", flag.ContinueOnError)
	fs.SetOutput(stderr)
	url := fs.String("url", "http://127.0.0.1:8400", "devidp `URL`")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var resp struct {
		KIDs []string `json:"kids"`
	}
	if err := call(ctx, *url+"/devidp/keys", nil, &resp); err != nil {
		return err
	}
	for _, k := range resp.KIDs {
		fmt.Fprintln(stdout, k)
	}
	return nil
}

// call POSTs in as JSON (GETs when in is nil) and decodes the answer.
func call(ctx context.Context, url string, in, out any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	method, body := http.MethodGet, io.Reader(nil)
	if in != nil {
		b, err := json.Marshal(in)
		if err != nil {
			return fmt.Errorf("encode request: %w", err)
		}
		method, body = http.MethodPost, bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, body)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, url, err)
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("%s %s: %w", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return fmt.Errorf("read %s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(b, &e)
		return fmt.Errorf("%s %s: %s: %s", method, url, resp.Status, e.Error)
	}
	if err := json.Unmarshal(b, out); err != nil {
		return fmt.Errorf("decode %s: %w", url, err)
	}
	return nil
}
