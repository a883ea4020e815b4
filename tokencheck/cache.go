package tokencheck

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// cacheShards spreads lock contention; a power of two.
const cacheShards = 32

// entryOverhead estimates the memory of a cache entry beyond the token:
// the decoded claims (typed fields and the raw map) are about twice the
// token's size, plus fixed costs.
const entryOverhead = 512

// tokenCache remembers verified tokens until their exp. Entries are found
// by a keyed 64-bit hash (maphash with a per-process random seed, so
// collisions cannot be aimed at) and confirmed by comparing the full token,
// so a collision can only cost a miss, never return the claims of another
// token. The comparison need not be constant-time: it only runs against
// the entry whose keyed hash equals that of the presented token, which an
// attacker who does not already hold the cached token cannot arrange, so
// its timing reveals nothing. (subtle.ConstantTimeCompare would cost about
// as much as the rest of the lookup for a 1.5 KB token.)
type tokenCache struct {
	seed       maphash.Seed
	maxEntries int   // per shard
	maxBytes   int64 // per shard
	shards     [cacheShards]cacheShard
	evictions  atomic.Uint64
}

type cacheShard struct {
	mu     sync.RWMutex
	m      map[uint64]*cacheEntry
	bytes  int64
	hits   atomic.Uint64
	misses atomic.Uint64
	_      [64]byte // keep shards on separate cache lines
}

type cacheEntry struct {
	token  string
	claims *Claims
	exp    int64 // unix nanoseconds of exp: never served at or after it
	key    *key
	iss    *issuer
	cost   int64
}

// valid reports whether e may still be served at now (unix nanoseconds):
// before exp, its key still published and fresh, its issuer unchanged.
func (e *cacheEntry) valid(now int64) bool {
	return now < e.exp && !e.key.dropped.Load() && !e.iss.retired.Load() && e.key.src.fresh(now)
}

func newTokenCache(entries int, bytes int64) *tokenCache {
	if entries < 0 {
		return nil
	}
	c := &tokenCache{
		seed:       maphash.MakeSeed(),
		maxEntries: max(1, entries/cacheShards),
		maxBytes:   max(1, bytes/cacheShards),
	}
	for i := range c.shards {
		c.shards[i].m = make(map[uint64]*cacheEntry)
	}
	return c
}

// hash keys a token by its last bytes: the signature, unique per token and
// unpredictable to anyone who does not hold the token. Hashing 64 bytes
// instead of the whole token (1–2 KB) is most of the cached path's saving;
// a collision costs only a miss, as the full token is compared.
func (c *tokenCache) hash(raw string) uint64 {
	const tail = 64
	if len(raw) > tail {
		raw = raw[len(raw)-tail:]
	}
	return maphash.String(c.seed, raw)
}

// get returns the cached claims of raw if the issuer that accepted it is in
// scope sc, or nil. It does not allocate.
func (c *tokenCache) get(raw string, now int64, sc scope) *Claims {
	h := c.hash(raw)
	sh := &c.shards[h%cacheShards]
	sh.mu.RLock()
	e := sh.m[h]
	sh.mu.RUnlock()
	if e == nil || e.token != raw || !sc.has(e.iss) {
		sh.misses.Add(1)
		return nil
	}
	if !e.valid(now) {
		sh.mu.Lock()
		if sh.m[h] == e {
			delete(sh.m, h)
			sh.bytes -= e.cost
		}
		sh.mu.Unlock()
		sh.misses.Add(1)
		return nil
	}
	sh.hits.Add(1)
	return e.claims
}

// put remembers a verified token, evicting dead entries first and then
// arbitrary ones to stay within bounds.
func (c *tokenCache) put(raw string, cl *Claims, exp int64, k *key, iss *issuer, now int64) {
	cost := int64(len(raw))*3 + entryOverhead
	if cost > c.maxBytes {
		return
	}
	e := &cacheEntry{token: raw, claims: cl, exp: exp, key: k, iss: iss, cost: cost}
	h := c.hash(raw)
	sh := &c.shards[h%cacheShards]
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if old := sh.m[h]; old != nil {
		delete(sh.m, h)
		sh.bytes -= old.cost
	}
	if len(sh.m) >= c.maxEntries || sh.bytes+cost > c.maxBytes {
		for h2, e2 := range sh.m {
			if !e2.valid(now) {
				delete(sh.m, h2)
				sh.bytes -= e2.cost
			}
		}
		// Still full: drop arbitrary entries (map order is randomised),
		// an eighth of the shard at once so that the scan above is rare.
		for h2, e2 := range sh.m {
			if len(sh.m) < c.maxEntries-c.maxEntries/8 && sh.bytes+cost <= c.maxBytes-c.maxBytes/8 {
				break
			}
			delete(sh.m, h2)
			sh.bytes -= e2.cost
			c.evictions.Add(1)
		}
	}
	sh.m[h] = e
	sh.bytes += cost
}

// purge removes entries that may no longer be served, so that memory held
// for tokens of dropped keys or retired issuers is released promptly.
func (c *tokenCache) purge(now int64) {
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		for h, e := range sh.m {
			if !e.valid(now) {
				delete(sh.m, h)
				sh.bytes -= e.cost
			}
		}
		sh.mu.Unlock()
	}
}

// drop removes the entries for which f is true. f runs with a shard
// locked.
func (c *tokenCache) drop(f func(*cacheEntry) bool) {
	for i := range c.shards {
		sh := &c.shards[i]
		sh.mu.Lock()
		for h, e := range sh.m {
			if f(e) {
				delete(sh.m, h)
				sh.bytes -= e.cost
			}
		}
		sh.mu.Unlock()
	}
}

func (c *tokenCache) stats() (hits, misses, evictions uint64, entries int, bytes int64) {
	for i := range c.shards {
		sh := &c.shards[i]
		hits += sh.hits.Load()
		misses += sh.misses.Load()
		sh.mu.RLock()
		entries += len(sh.m)
		bytes += sh.bytes
		sh.mu.RUnlock()
	}
	return hits, misses, c.evictions.Load(), entries, bytes
}
