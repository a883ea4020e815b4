package policy

import (
	"fmt"
	"slices"
	"sort"
	"strings"
)

// memberSet is a membership test: a slice when it has a few members
// (comparing a few strings beats hashing one), a map beyond.
type memberSet[K comparable] struct {
	small []K
	large map[K]struct{}
}

// smallSetMax is the size up to which a memberSet scans a slice.
const smallSetMax = 8

func (s *memberSet[K]) add(k K) {
	if s.has(k) {
		return
	}
	if s.large == nil && len(s.small) < smallSetMax {
		s.small = append(s.small, k)
		return
	}
	if s.large == nil {
		s.large = make(map[K]struct{}, 2*smallSetMax)
		for _, v := range s.small {
			s.large[v] = struct{}{}
		}
		s.small = nil
	}
	s.large[k] = struct{}{}
}

func (s *memberSet[K]) has(k K) bool {
	if s.large != nil {
		_, ok := s.large[k]
		return ok
	}
	for _, v := range s.small {
		if v == k {
			return true
		}
	}
	return false
}

// pathMatcher matches request paths against exact, prefix ("/a/*") and
// suffix ("*.json") patterns without scanning them: exact paths are a
// memberSet, prefixes and suffixes are prefix-free sorted lists searched by
// bisection.
type pathMatcher struct {
	any      bool
	exact    memberSet[string]
	prefixes []string // sorted, no element is a prefix of another
	suffixes []string // sorted by reversed string, no element a suffix of another
}

// checkPathPattern reports why p is not a valid path pattern.
func checkPathPattern(p string) error {
	switch {
	case p == "":
		return fmt.Errorf("empty path")
	case p == "*":
		return nil
	case strings.HasPrefix(p, "*"):
		if strings.ContainsAny(p[1:], "*/") {
			return fmt.Errorf("suffix pattern %q: want \"*\" followed by a suffix without \"*\" or \"/\", e.g. \"*.json\"", p)
		}
		if len(p) == 1 {
			return fmt.Errorf("empty suffix")
		}
		return nil
	case !strings.HasPrefix(p, "/"):
		return fmt.Errorf("path %q: want an absolute path, \"/prefix/*\" or \"*suffix\"", p)
	case strings.Contains(strings.TrimSuffix(p, "*"), "*"):
		return fmt.Errorf("path %q: \"*\" is allowed only as the first or last character", p)
	case strings.ContainsAny(p, "?#"):
		return fmt.Errorf("path %q: paths are matched without query or fragment", p)
	}
	return nil
}

// denyPaths returns a Deny rule's path patterns with those that make a
// trailing '/' not significant, because many routers (Express without
// strict routing, Spring up to 5.3, Flask's redirect) serve "/admin/" as
// "/admin": an exact "/admin" also matches "/admin/" and the reverse, a
// prefix "/admin/*" also matches "/admin", and a suffix "*.bak" also
// matches "x.bak/" (the internal suffix ".bak/", which users cannot
// write). The widening only ever refuses more; Allow rules keep the exact
// meaning, since widening them could allow more.
func denyPaths(patterns []string) []string {
	out := slices.Clone(patterns)
	for _, p := range patterns {
		switch {
		case p == "*" || p == "/" || p == "/*":
		case strings.HasPrefix(p, "*"):
			out = append(out, p+"/")
		case strings.HasSuffix(p, "/*"):
			out = append(out, strings.TrimSuffix(p, "/*"))
		case strings.HasSuffix(p, "*"):
			// "/admin*" already matches "/admin" and "/admin/".
		case strings.HasSuffix(p, "/"):
			out = append(out, strings.TrimSuffix(p, "/"))
		default:
			out = append(out, p+"/")
		}
	}
	return out
}

func newPathMatcher(patterns []string) *pathMatcher {
	m := &pathMatcher{}
	var pre, suf []string
	for _, p := range patterns {
		switch {
		case p == "*":
			m.any = true
		case strings.HasPrefix(p, "*"):
			suf = append(suf, p[1:])
		case strings.HasSuffix(p, "*"):
			pre = append(pre, strings.TrimSuffix(p, "*"))
		default:
			m.exact.add(p)
		}
	}
	slices.Sort(pre)
	for _, p := range pre {
		// Sorted: a prefix of p, if present, was kept just before.
		if n := len(m.prefixes); n > 0 && strings.HasPrefix(p, m.prefixes[n-1]) {
			continue
		}
		m.prefixes = append(m.prefixes, p)
	}
	slices.SortFunc(suf, compareReversed)
	for _, s := range suf {
		if n := len(m.suffixes); n > 0 && strings.HasSuffix(s, m.suffixes[n-1]) {
			continue
		}
		m.suffixes = append(m.suffixes, s)
	}
	return m
}

// match reports whether path matches one pattern. In a sorted prefix-free
// list, the only candidate prefix of path is the greatest element <= path:
// any element between a prefix q of path and path itself would start with
// q. The same holds for suffixes in reversed order.
func (m *pathMatcher) match(path string) bool {
	if m.any {
		return true
	}
	if m.exact.has(path) {
		return true
	}
	if n := len(m.prefixes); n > 0 {
		i := sort.Search(n, func(i int) bool { return m.prefixes[i] > path }) - 1
		if i >= 0 && strings.HasPrefix(path, m.prefixes[i]) {
			return true
		}
	}
	if n := len(m.suffixes); n > 0 {
		i := sort.Search(n, func(i int) bool { return compareReversed(m.suffixes[i], path) > 0 }) - 1
		if i >= 0 && strings.HasSuffix(path, m.suffixes[i]) {
			return true
		}
	}
	return false
}

// compareReversed compares a and b read from their last byte.
func compareReversed(a, b string) int {
	i, j := len(a)-1, len(b)-1
	for i >= 0 && j >= 0 {
		if a[i] != b[j] {
			if a[i] < b[j] {
				return -1
			}
			return 1
		}
		i--
		j--
	}
	switch {
	case i < 0 && j < 0:
		return 0
	case i < 0:
		return -1
	default:
		return 1
	}
}

// hostPattern is a lower-case exact host ("api.example.com",
// "api.example.com:8443") or a wildcard suffix (".example.com" from
// "*.example.com").
type hostPattern struct {
	value    string
	wildcard bool
	hasPort  bool
}

func checkHostPattern(h string) error {
	rest := strings.TrimPrefix(h, "*.")
	if rest == "" || strings.ContainsAny(rest, "*/ ") {
		return fmt.Errorf("host %q: want a host name, optionally with a port, or \"*.\" followed by a domain", h)
	}
	return nil
}

func newHostPatterns(hosts []string) []hostPattern {
	out := make([]hostPattern, 0, len(hosts))
	for _, h := range hosts {
		h = strings.ToLower(h)
		p := hostPattern{value: h, hasPort: hostHasPort(h)}
		if strings.HasPrefix(h, "*.") {
			p.value, p.wildcard = h[1:], true
		}
		out = append(out, p)
	}
	return out
}

// hostHasPort reports whether h ends with ":port" (IPv6 literals are
// bracketed).
func hostHasPort(h string) bool {
	i := strings.LastIndexByte(h, ':')
	return i >= 0 && i > strings.LastIndexByte(h, ']')
}

func matchHosts(patterns []hostPattern, host string) bool {
	bare := host
	if hostHasPort(host) {
		bare = host[:strings.LastIndexByte(host, ':')]
	}
	for i := range patterns {
		p := &patterns[i]
		h := bare
		if p.hasPort {
			h = host
		}
		if p.wildcard {
			if len(h) > len(p.value) && strings.EqualFold(h[len(h)-len(p.value):], p.value) {
				return true
			}
		} else if strings.EqualFold(h, p.value) {
			return true
		}
	}
	return false
}

// stringMatch is a compiled StringMatch over a list-valued claim.
type stringMatch struct {
	anyOf []string // sorted
	allOf []string
}

func newStringMatch(anyOf, allOf []string) *stringMatch {
	m := &stringMatch{anyOf: slices.Clone(anyOf), allOf: slices.Clone(allOf)}
	slices.Sort(m.anyOf)
	m.anyOf = slices.Compact(m.anyOf)
	return m
}

func (m *stringMatch) match(values []string) bool {
	if len(m.anyOf) > 0 {
		found := false
		for _, v := range values {
			if _, ok := slices.BinarySearch(m.anyOf, v); ok {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	for _, want := range m.allOf {
		if !slices.Contains(values, want) {
			return false
		}
	}
	return true
}
