package tokencheck

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lestrrat-go/jwx/v2/jwk"
)

// maxDocumentSize bounds discovery documents and key sets read from an IdP.
const maxDocumentSize = 1 << 20

// minRSABits refuses weak keys published by a (misconfigured) IdP.
const minRSABits = 2048

// key is one verification key of a source. Its identity matters: cached
// tokens point at the key that verified them, and a key that leaves the key
// set is marked dropped, which invalidates those entries at once.
type key struct {
	kid     string
	alg     string // the JWK's alg, "" when absent
	pub     crypto.PublicKey
	dropped atomic.Bool
	src     *source
}

// keySet is an immutable snapshot of a source's keys.
type keySet struct {
	keys      map[string]*key
	fetchedAt time.Time
}

// source fetches and refreshes the key set of one issuer string (one
// discovery document, or one fixed JWKS URI). Sources are shared by issuers
// that name the same documents, and survive issuer updates that keep them.
// One goroutine per source does all fetching, so at most one refresh is in
// flight per source.
type source struct {
	spec  sourceSpec
	cfg   *Config
	purge func() // drops cache entries of dropped keys

	set      atomic.Pointer[keySet]
	lastGood atomic.Int64 // cfg.Now() of the last good fetch, unix nanoseconds; 0 = never

	mu            sync.Mutex
	inflight      chan struct{} // closed when the running refresh ends; nil when idle
	lastTriggered time.Time     // last refresh requested by a request (unknown kid, no keys)
	lastAttempt   time.Time
	lastErr       error
	nextRefresh   time.Time
	failures      int
	refreshOK     uint64
	refreshFailed uint64
	jwksURI       string // from discovery, or fixed

	trigger chan struct{}
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}
	refs    int // issuers using it; guarded by Validator.mu
}

func newSource(spec sourceSpec, cfg *Config, purge func()) *source {
	ctx, cancel := context.WithCancel(context.Background())
	s := &source{
		spec:    spec,
		cfg:     cfg,
		purge:   purge,
		jwksURI: spec.jwksURI,
		trigger: make(chan struct{}, 1),
		ctx:     ctx,
		cancel:  cancel,
		done:    make(chan struct{}),
		// The first refresh starts at once: mark it in flight now so that
		// requests arriving before the goroutine runs wait for it.
		inflight: make(chan struct{}),
	}
	go s.run()
	return s
}

// stop ends the refresh goroutine, aborting a fetch in flight, and drops
// every key so that cached tokens of this source are refused.
func (s *source) stop() {
	s.cancel()
	<-s.done
	if ks := s.set.Load(); ks != nil {
		for _, k := range ks.keys {
			k.dropped.Store(true)
		}
	}
}

func (s *source) run() {
	defer close(s.done)
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		select {
		case <-s.ctx.Done():
			s.mu.Lock()
			if s.inflight != nil {
				close(s.inflight)
				s.inflight = nil
			}
			s.mu.Unlock()
			return
		case <-timer.C:
		case <-s.trigger:
		}
		timer.Reset(s.refresh())
	}
}

// refresh fetches once and returns the time until the next refresh.
func (s *source) refresh() time.Duration {
	// A trigger sent while this refresh was already due is served by it.
	select {
	case <-s.trigger:
	default:
	}
	s.mu.Lock()
	if s.inflight == nil {
		s.inflight = make(chan struct{})
	}
	done := s.inflight
	jwksURI := s.jwksURI
	s.mu.Unlock()

	ctx, cancel := context.WithTimeout(s.ctx, s.cfg.FetchTimeout)
	keys, jwksURI, maxAge, err := s.fetch(ctx, jwksURI)
	cancel()
	now := s.cfg.Now()

	var added, dropped []string
	if err == nil {
		added, dropped = s.install(keys, now)
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	s.lastAttempt = now
	var wait time.Duration
	if err != nil {
		s.lastErr = err
		s.failures++
		s.refreshFailed++
		wait = min(time.Second<<min(s.failures-1, 16), s.cfg.MinRefresh)
		if s.ctx.Err() == nil { // not stopping
			s.cfg.Logger.Warn("refresh issuer keys", "issuer", s.spec.issuer, "error", err, "retry_in", wait)
		}
	} else {
		s.lastErr = nil
		s.failures = 0
		s.refreshOK++
		s.jwksURI = jwksURI
		if maxAge < 0 {
			maxAge = defaultRefresh
		}
		wait = min(max(maxAge, s.cfg.MinRefresh), s.cfg.MaxRefresh)
		if len(added)+len(dropped) > 0 {
			s.cfg.Logger.Info("issuer keys changed", "issuer", s.spec.issuer, "jwks_uri", jwksURI,
				"added_kids", added, "removed_kids", dropped, "next_refresh_in", wait)
		}
	}
	s.nextRefresh = now.Add(wait)
	s.inflight = nil
	close(done)
	if len(dropped) > 0 {
		s.purge()
	}
	return wait
}

// install publishes keys, keeping the identity of keys that did not change
// so that tokens they verified stay cached, and marks the others dropped.
// It returns the kids added and dropped (a kid whose key changed is both).
func (s *source) install(keys map[string]*key, now time.Time) (added, dropped []string) {
	old := s.set.Load()
	kept := map[string]bool{}
	if old != nil {
		for kid, ok := range old.keys {
			nk, still := keys[kid]
			if still && nk.alg == ok.alg && samePublicKey(nk.pub, ok.pub) {
				keys[kid] = ok
				kept[kid] = true
				continue
			}
			ok.dropped.Store(true)
			dropped = append(dropped, kid)
		}
	}
	for kid := range keys {
		if !kept[kid] {
			added = append(added, kid)
		}
	}
	s.set.Store(&keySet{keys: keys, fetchedAt: now})
	s.lastGood.Store(now.UnixNano())
	return added, dropped
}

func samePublicKey(a, b crypto.PublicKey) bool {
	type equaler interface{ Equal(crypto.PublicKey) bool }
	e, ok := a.(equaler)
	return ok && e.Equal(b)
}

// awaitRefresh makes the key set as fresh as the rate limit allows before a
// request decides that a kid is unknown or that no keys exist: it joins the
// refresh in flight, or starts one unless the last request-triggered refresh
// was less than UnknownKIDInterval ago. It returns when that refresh ends,
// when ctx is done, or after FetchTimeout, whichever comes first.
func (s *source) awaitRefresh(ctx context.Context) {
	s.mu.Lock()
	done := s.inflight
	if done == nil {
		now := s.cfg.Now()
		if !s.lastTriggered.IsZero() && now.Sub(s.lastTriggered) < s.cfg.UnknownKIDInterval {
			s.mu.Unlock()
			return
		}
		s.lastTriggered = now
		s.inflight = make(chan struct{})
		done = s.inflight
		select {
		case s.trigger <- struct{}{}:
		default:
		}
	}
	s.mu.Unlock()
	t := time.NewTimer(s.cfg.FetchTimeout)
	defer t.Stop()
	select {
	case <-done:
	case <-ctx.Done():
	case <-s.ctx.Done(): // the source was removed while the request ran
	case <-t.C:
	}
}

// usable returns the key set if it exists and is not older than
// MaxStaleness at now.
func (s *source) usable(now time.Time) *keySet {
	ks := s.set.Load()
	if ks == nil || now.Sub(ks.fetchedAt) > s.cfg.MaxStaleness {
		return nil
	}
	return ks
}

// fresh reports, for the cached path, whether the key set is within
// MaxStaleness at now (unix nanoseconds).
func (s *source) fresh(now int64) bool {
	g := s.lastGood.Load()
	return g != 0 && now-g <= int64(s.cfg.MaxStaleness)
}

// discoveryDoc is the part of an OpenID Provider Metadata document we use.
type discoveryDoc struct {
	Issuer  string `json:"issuer"`
	JWKSURI string `json:"jwks_uri"`
}

// fetch reads the discovery document (if any) and the key set. jwksURI is
// the last known key location, used only when there is no discovery.
func (s *source) fetch(ctx context.Context, jwksURI string) (map[string]*key, string, time.Duration, error) {
	if s.spec.discoveryURL != "" {
		body, _, err := s.get(ctx, s.spec.discoveryURL)
		if err != nil {
			return nil, "", 0, err
		}
		var doc discoveryDoc
		if err := json.Unmarshal(body, &doc); err != nil {
			return nil, "", 0, fmt.Errorf("decode discovery document %s: %w", s.spec.discoveryURL, err)
		}
		if doc.Issuer != s.spec.issuer {
			return nil, "", 0, fmt.Errorf("discovery document %s: issuer %q, want %q", s.spec.discoveryURL, doc.Issuer, s.spec.issuer)
		}
		jwksURI = doc.JWKSURI
		if a := s.spec.cloudAuthority; a != "" && strings.HasPrefix(jwksURI, a+"/") {
			// AuthorityHost overrides where keys come from too, also when
			// it proxies real documents that name the cloud's host.
			jwksURI = s.spec.authority + strings.TrimPrefix(jwksURI, a)
		}
		if _, err := checkURL(jwksURI); err != nil {
			return nil, "", 0, fmt.Errorf("discovery document %s: jwks_uri: %w", s.spec.discoveryURL, err)
		}
	}
	body, hdr, err := s.get(ctx, jwksURI)
	if err != nil {
		return nil, "", 0, err
	}
	keys, err := parseKeySet(body, s)
	if err != nil {
		return nil, "", 0, fmt.Errorf("key set %s: %w", jwksURI, err)
	}
	return keys, jwksURI, maxAge(hdr.Get("Cache-Control")), nil
}

func (s *source) get(ctx context.Context, u string) ([]byte, http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, nil, fmt.Errorf("get %s: %w", u, err)
	}
	req.Header.Set("Accept", "application/json")
	resp, err := s.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, nil, fmt.Errorf("get %s: %w", u, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, nil, fmt.Errorf("get %s: status %s", u, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxDocumentSize+1))
	if err != nil {
		return nil, nil, fmt.Errorf("read %s: %w", u, err)
	}
	if len(body) > maxDocumentSize {
		return nil, nil, fmt.Errorf("read %s: larger than %d bytes", u, maxDocumentSize)
	}
	return body, resp.Header, nil
}

// parseKeySet parses a JWKS with jwx and keeps the signature keys we can
// use: a kid, use "sig" or absent, RSA of at least 2048 bits or EC P-256/
// P-384/P-521. Others are skipped, not fatal: IdPs publish encryption keys
// and keys for other algorithms next to signing keys.
func parseKeySet(body []byte, src *source) (map[string]*key, error) {
	set, err := jwk.Parse(body)
	if err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	keys := make(map[string]*key, set.Len())
	for i := 0; i < set.Len(); i++ {
		jk, _ := set.Key(i)
		kid := jk.KeyID()
		if kid == "" || (jk.KeyUsage() != "" && jk.KeyUsage() != string(jwk.ForSignature)) {
			continue
		}
		var pub crypto.PublicKey
		switch jk.KeyType() {
		case "RSA":
			var k rsa.PublicKey
			if err := jk.Raw(&k); err != nil || k.N.BitLen() < minRSABits {
				continue
			}
			pub = &k
		case "EC":
			var k ecdsa.PublicKey
			if err := jk.Raw(&k); err != nil {
				continue
			}
			pub = &k
		default:
			continue
		}
		if _, dup := keys[kid]; dup {
			// Two keys under one kid: which one a token means is
			// ambiguous, so neither is used.
			keys[kid] = nil
			continue
		}
		var alg string
		if a := jk.Algorithm(); a != nil {
			alg = a.String()
		}
		keys[kid] = &key{kid: kid, alg: alg, pub: pub, src: src}
	}
	for kid, k := range keys {
		if k == nil {
			delete(keys, kid)
		}
	}
	if len(keys) == 0 {
		return nil, errors.New("no usable signature keys")
	}
	return keys, nil
}

// maxAge returns the max-age directive of a Cache-Control header, or -1
// when there is none (or it is not a number). no-cache and no-store count
// as max-age=0: refresh as often as MinRefresh allows.
func maxAge(cc string) time.Duration {
	for _, d := range strings.Split(cc, ",") {
		name, _, _ := strings.Cut(strings.TrimSpace(d), "=")
		if strings.EqualFold(name, "no-cache") || strings.EqualFold(name, "no-store") {
			return 0
		}
	}
	for _, d := range strings.Split(cc, ",") {
		name, val, ok := strings.Cut(strings.TrimSpace(d), "=")
		if !ok || !strings.EqualFold(name, "max-age") {
			continue
		}
		n, err := strconv.ParseInt(strings.Trim(val, `"`), 10, 64)
		if err != nil || n < 0 {
			return -1
		}
		if n > int64(365*24*time.Hour/time.Second) {
			n = int64(365 * 24 * time.Hour / time.Second)
		}
		return time.Duration(n) * time.Second
	}
	return -1
}

// status is the debug view of a source.
func (s *source) status(now time.Time) SourceStatus {
	s.mu.Lock()
	st := SourceStatus{
		Issuer:        s.spec.issuer,
		Version:       s.spec.version,
		DiscoveryURL:  s.spec.discoveryURL,
		JWKSURI:       s.jwksURI,
		NextRefresh:   s.nextRefresh,
		LastAttempt:   s.lastAttempt,
		RefreshOK:     s.refreshOK,
		RefreshFailed: s.refreshFailed,
	}
	if s.lastErr != nil {
		st.LastError = s.lastErr.Error()
	}
	s.mu.Unlock()
	if ks := s.set.Load(); ks != nil {
		st.HasKeys = true
		st.FetchedAt = ks.fetchedAt
		st.KeySetAge = now.Sub(ks.fetchedAt)
		st.Stale = now.Sub(ks.fetchedAt) > s.cfg.MaxStaleness
		for kid := range ks.keys {
			st.KeyIDs = append(st.KeyIDs, kid)
		}
	}
	return st
}
