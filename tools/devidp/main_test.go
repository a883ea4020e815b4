package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/portcullis-mesh/portcullis/tools/devidp/idp"
)

func newServer(t *testing.T) (*idp.IDP, string) {
	t.Helper()
	p, err := idp.New(idp.Options{})
	if err != nil {
		t.Fatalf("idp.New: %v", err)
	}
	srv := httptest.NewServer(p.Handler(""))
	t.Cleanup(srv.Close)
	return p, srv.URL
}

func runCLI(t *testing.T, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	err := run(context.Background(), args, &out, &errOut)
	return out.String(), err
}

func TestMintCommand(t *testing.T) {
	_, url := newServer(t)
	out, err := runCLI(t, "mint", "--url", url, "--aud", "api://orders", "--version", "1", "--roles", "a,b", "--roles", "c",
		"--scopes", "Orders.Read", "--claim", `custom={"x":1}`, "--claim", "name=plain text", "--lifetime", "10m")
	if err != nil {
		t.Fatalf("mint: %v", err)
	}
	parts := strings.Split(strings.TrimSpace(out), ".")
	if len(parts) != 3 {
		t.Fatalf("mint printed %q, want a compact JWS", out)
	}
	b, _ := base64.RawURLEncoding.DecodeString(parts[1])
	var c map[string]any
	if err := json.Unmarshal(b, &c); err != nil {
		t.Fatalf("payload: %v", err)
	}
	if c["ver"] != "1.0" || c["aud"] != "api://orders" || c["scp"] != "Orders.Read" || c["name"] != "plain text" ||
		len(c["roles"].([]any)) != 3 || c["custom"].(map[string]any)["x"] != 1.0 || c["exp"].(float64)-c["iat"].(float64) != 600 {
		t.Errorf("claims %v", c)
	}
	if _, err := runCLI(t, "mint", "--url", url); err == nil || !strings.Contains(err.Error(), "audience is required") {
		t.Errorf("mint without --aud: got %v, want the server's refusal", err)
	}
}

func TestRotateAndKeysCommands(t *testing.T) {
	p, url := newServer(t)
	old := p.KeyIDs()[0]
	kid, err := runCLI(t, "rotate", "--url", url, "--keep-old")
	if err != nil {
		t.Fatalf("rotate: %v", err)
	}
	kid = strings.TrimSpace(kid)
	out, err := runCLI(t, "keys", "--url", url)
	if err != nil {
		t.Fatalf("keys: %v", err)
	}
	if got, want := strings.Fields(out), []string{old, kid}; len(got) != 2 || got[0] != want[0] || got[1] != want[1] {
		t.Errorf("keys: got %v, want %v", got, want)
	}
}

func TestServeRefusesNonLoopback(t *testing.T) {
	if _, err := runCLI(t, "serve", "--listen", "0.0.0.0:0"); err == nil || !strings.Contains(err.Error(), "only listens on loopback") {
		t.Errorf("serve on 0.0.0.0: got %v, want a loopback error", err)
	}
	if _, err := runCLI(t, "frobnicate"); err == nil {
		t.Error("unknown command: got nil error")
	}
}
