package idp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Handler serves the discovery documents, the key sets and the devidp
// endpoints:
//
//	GET  /{tenant}/.well-known/openid-configuration        v1 discovery
//	GET  /{tenant}/v2.0/.well-known/openid-configuration   v2 discovery
//	GET  /{tenant}/discovery/keys                          JWKS (v1 jwks_uri uses /common/)
//	GET  /{tenant}/discovery/v2.0/keys                     JWKS
//	POST /devidp/token    TokenRequest as JSON → {"access_token", "token_type", "expires_in"}
//	POST /devidp/rotate   {"keepOld": bool} → {"kid", "kids"}
//	GET  /devidp/keys     {"kids": [...]} (active last)
//	POST /{tenant}/oauth2/v2.0/token   client credentials: scope=<resource>/.default → v2 app token
//	POST /{tenant}/oauth2/token        client credentials: resource=<resource> → v1 app token
//
// {tenant} is a served tenant GUID, "organizations" or "common"; the latter
// two answer with the {tenantid} issuer template, as Entra does. Links in
// discovery documents use base (e.g. "http://127.0.0.1:8400"); empty base
// means "http://" + the request's Host.
func (p *IDP) Handler(base string) http.Handler {
	mux := http.NewServeMux()
	baseOf := func(r *http.Request) string {
		if base != "" {
			return base
		}
		return "http://" + r.Host
	}
	mux.HandleFunc("GET /{tenant}/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		p.discovery(w, r, baseOf(r), 1)
	})
	mux.HandleFunc("GET /{tenant}/v2.0/.well-known/openid-configuration", func(w http.ResponseWriter, r *http.Request) {
		p.discovery(w, r, baseOf(r), 2)
	})
	keys := func(w http.ResponseWriter, r *http.Request) {
		if !p.knownTenant(r.PathValue("tenant")) {
			writeError(w, http.StatusBadRequest, "AADSTS90002: tenant not found")
			return
		}
		if p.maxAge > 0 {
			w.Header().Set("Cache-Control", "max-age="+strconv.Itoa(int(p.maxAge/time.Second)))
		}
		writeJSON(w, http.StatusOK, p.jwks())
	}
	mux.HandleFunc("GET /{tenant}/discovery/keys", keys)
	mux.HandleFunc("GET /{tenant}/discovery/v2.0/keys", keys)
	mux.HandleFunc("POST /devidp/token", func(w http.ResponseWriter, r *http.Request) {
		var req TokenRequest
		if err := decodeBody(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		tok, err := p.Mint(req)
		if err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		life := req.LifetimeSeconds
		if life == 0 {
			life = 3600
		}
		writeJSON(w, http.StatusOK, map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": life})
	})
	mux.HandleFunc("POST /devidp/rotate", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			KeepOld bool `json:"keepOld"`
		}
		if err := decodeBody(r, &req); err != nil {
			writeError(w, http.StatusBadRequest, err.Error())
			return
		}
		kid, err := p.Rotate(req.KeepOld)
		if err != nil {
			writeError(w, http.StatusInternalServerError, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, map[string]any{"kid": kid, "kids": p.KeyIDs()})
	})
	mux.HandleFunc("GET /devidp/keys", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"kids": p.KeyIDs()})
	})
	mux.HandleFunc("POST /{tenant}/oauth2/v2.0/token", func(w http.ResponseWriter, r *http.Request) {
		p.clientCredentials(w, r, 2)
	})
	mux.HandleFunc("POST /{tenant}/oauth2/token", func(w http.ResponseWriter, r *http.Request) {
		p.clientCredentials(w, r, 1)
	})
	return mux
}

// clientCredentials imitates Entra's token endpoints for the client
// credentials grant, so that SDKs and curl can get app tokens the usual
// way: v2 takes scope=<resource>/.default, v1 takes resource=<resource>.
// There are no app registrations: any client_id is accepted, no secret is
// checked, and the token's roles are taken from an optional, non-standard
// "roles" form field (comma-separated).
func (p *IDP) clientCredentials(w http.ResponseWriter, r *http.Request, ver int) {
	if err := r.ParseForm(); err != nil {
		oauthError(w, "invalid_request", err.Error())
		return
	}
	tenant := r.PathValue("tenant")
	if !slices.Contains(p.tenants, tenant) {
		oauthError(w, "invalid_request", "AADSTS90002: tenant not found (use a tenant GUID)")
		return
	}
	if gt := r.PostForm.Get("grant_type"); gt != "client_credentials" {
		oauthError(w, "unsupported_grant_type", fmt.Sprintf("grant_type %q: only client_credentials is supported", gt))
		return
	}
	client := r.PostForm.Get("client_id")
	if client == "" {
		oauthError(w, "invalid_request", "client_id is required")
		return
	}
	aud := r.PostForm.Get("resource")
	if ver == 2 {
		scope := r.PostForm.Get("scope")
		var ok bool
		if aud, ok = strings.CutSuffix(scope, "/.default"); !ok || aud == "" {
			oauthError(w, "invalid_scope", "scope must be <resource>/.default for client credentials")
			return
		}
	}
	if aud == "" {
		oauthError(w, "invalid_request", "resource is required")
		return
	}
	req := TokenRequest{Tenant: tenant, Version: ver, Audience: aud, App: true, ClientID: client}
	for _, role := range strings.Split(r.PostForm.Get("roles"), ",") {
		if role = strings.TrimSpace(role); role != "" {
			req.Roles = append(req.Roles, role)
		}
	}
	tok, err := p.Mint(req)
	if err != nil {
		oauthError(w, "invalid_request", err.Error())
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"access_token": tok, "token_type": "Bearer", "expires_in": 3600})
}

func oauthError(w http.ResponseWriter, code, desc string) {
	writeJSON(w, http.StatusBadRequest, map[string]string{"error": code, "error_description": desc})
}

func (p *IDP) knownTenant(t string) bool {
	return t == "organizations" || t == "common" || slices.Contains(p.tenants, t)
}

func (p *IDP) discovery(w http.ResponseWriter, r *http.Request, base string, ver int) {
	t := r.PathValue("tenant")
	if !p.knownTenant(t) {
		writeError(w, http.StatusBadRequest, "AADSTS90002: tenant not found")
		return
	}
	issTenant := t
	if t == "organizations" || t == "common" {
		issTenant = "{tenantid}"
	}
	doc := map[string]any{
		"issuer":                                Issuer(ver, issTenant),
		"response_types_supported":              []string{"code", "id_token", "code id_token", "token id_token", "token"},
		"subject_types_supported":               []string{"pairwise"},
		"id_token_signing_alg_values_supported": []string{"RS256"},
		"scopes_supported":                      []string{"openid"},
		"tenant_region_scope":                   "WW",
		"cloud_instance_name":                   "microsoftonline.com",
		"cloud_graph_host_name":                 "graph.windows.net",
		"msgraph_host":                          "graph.microsoft.com",
	}
	if ver == 1 {
		doc["authorization_endpoint"] = base + "/" + t + "/oauth2/authorize"
		doc["token_endpoint"] = base + "/" + t + "/oauth2/token"
		// Entra's v1 documents point every tenant at the common keys.
		doc["jwks_uri"] = base + "/common/discovery/keys"
	} else {
		doc["authorization_endpoint"] = base + "/" + t + "/oauth2/v2.0/authorize"
		doc["token_endpoint"] = base + "/" + t + "/oauth2/v2.0/token"
		doc["jwks_uri"] = base + "/" + t + "/discovery/v2.0/keys"
	}
	writeJSON(w, http.StatusOK, doc)
}

func decodeBody(r *http.Request, v any) error {
	dec := json.NewDecoder(http.MaxBytesReader(nil, r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("decode request: %w", err)
	}
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json; charset=utf-8")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

// CheckLoopback returns an error unless addr (host:port) names a loopback
// address: a devidp must never be reachable from a network, since anyone
// who reaches it can mint tokens.
func CheckLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	ip := net.ParseIP(host)
	if ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("listen address %q: devidp only listens on loopback (127.0.0.0/8, ::1, localhost)", addr)
	}
	return nil
}

// Listen opens a listener on addr after CheckLoopback, and checks the
// address actually bound (localhost may resolve to anything).
func Listen(addr string) (net.Listener, error) {
	if err := CheckLoopback(addr); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", addr, err)
	}
	if tcp, ok := ln.Addr().(*net.TCPAddr); !ok || !tcp.IP.IsLoopback() {
		ln.Close()
		return nil, fmt.Errorf("listen on %s: bound %s, which is not loopback", addr, ln.Addr())
	}
	return ln, nil
}

// Serve serves p on ln until ctx is done, then shuts down gracefully.
func (p *IDP) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           p.Handler("http://" + ln.Addr().String()),
		ReadHeaderTimeout: 5 * time.Second,
	}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shut down: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	return nil
}
