package tokencheck

import (
	"slices"
	"time"
)

// IssuerStatus is the health of one trusted issuer, for debug endpoints and
// metrics collectors.
type IssuerStatus struct {
	// Ref is IssuerConfig.Ref.
	Ref string
	// Sources has one entry per key source: one per accepted version for
	// Azure AD, one for OIDC.
	Sources []SourceStatus
}

// SourceStatus is the state of one key source (discovery document and
// JWKS).
type SourceStatus struct {
	// Issuer is the iss this source accepts, possibly with {tenantid}.
	Issuer string
	// Version is the Azure AD token version (1 or 2); 0 for OIDC.
	Version int
	// DiscoveryURL is where the discovery document is fetched; empty with
	// a fixed JWKS URI.
	DiscoveryURL string
	// JWKSURI is where keys were last fetched (or will be).
	JWKSURI string
	// HasKeys reports whether a key set was ever fetched. Until then every
	// token of this source is refused.
	HasKeys bool
	// KeyIDs lists the kids of the current key set, sorted.
	KeyIDs []string
	// FetchedAt is when the current key set was fetched, KeySetAge how long
	// ago, Stale whether that is beyond MaxStaleness (tokens refused).
	FetchedAt time.Time
	KeySetAge time.Duration
	Stale     bool
	// LastAttempt is when the last refresh ended; LastError its error,
	// empty when it succeeded.
	LastAttempt time.Time
	LastError   string
	// NextRefresh is when the next scheduled refresh starts.
	NextRefresh time.Time
	// RefreshOK and RefreshFailed count refreshes since the source started.
	RefreshOK     uint64
	RefreshFailed uint64
}

// Issuers reports the state of every trusted issuer, sorted by Ref.
func (v *Validator) Issuers() []IssuerStatus {
	now := v.cfg.Now()
	set := v.state.Load()
	out := make([]IssuerStatus, 0, len(set.issuers))
	for _, is := range set.issuers {
		st := IssuerStatus{Ref: is.n.ref}
		for _, src := range is.sources {
			ss := src.status(now)
			slices.Sort(ss.KeyIDs)
			st.Sources = append(st.Sources, ss)
		}
		out = append(out, st)
	}
	return out
}

// Stats are the Validator's counters since New, for metrics: the agent
// exports them (e.g. with prometheus CounterFunc/GaugeFunc) so that this
// package needs no metrics library.
type Stats struct {
	// CacheHits and CacheMisses count lookups of the verified-token cache.
	CacheHits   uint64
	CacheMisses uint64
	// CacheEvictions counts live entries dropped to stay within bounds.
	CacheEvictions uint64
	// CacheEntries and CacheBytes are the current size (bytes estimated).
	CacheEntries int
	CacheBytes   int64
}

// Stats returns the current counters.
func (v *Validator) Stats() Stats {
	var s Stats
	if v.cache != nil {
		s.CacheHits, s.CacheMisses, s.CacheEvictions, s.CacheEntries, s.CacheBytes = v.cache.stats()
	}
	return s
}
