package policy

import (
	"math/bits"
	"strings"
)

// maxRulesPerPolicy bounds spec.rules (the CRD says the same), so a rule
// set fits a fixed-size bitset on the stack.
const maxRulesPerPolicy = 1024

// ruleIndexMin is the number of rules from which a policy gets a ruleIndex;
// scanning fewer is faster than intersecting bitsets.
const ruleIndexMin = 9

// ruleBits is a set of rule indices of one policy.
type ruleBits [maxRulesPerPolicy / 64]uint64

func (b *ruleBits) set(i int) { b[i/64] |= 1 << (i % 64) }

func (b *ruleBits) or(o *ruleBits, words int) {
	for i := range words {
		b[i] |= o[i]
	}
}

// ruleIndex narrows a policy's rules to those whose port and path can
// match, so evaluation touches only the rules that can apply: rules by
// port, and by path through an exact-path map and prefix and suffix
// tries. Bitsets are words long (enough for the policy's rules).
type ruleIndex struct {
	words    int
	anyPort  *ruleBits
	byPort   map[uint16]*ruleBits
	anyPath  *ruleBits
	exact    map[string]*ruleBits
	prefixes *trieNode
	suffixes *trieNode // labels stored reversed
}

func newRuleIndex(rules []crule, patterns [][]string) *ruleIndex {
	x := &ruleIndex{words: (len(rules) + 63) / 64, anyPort: &ruleBits{}, byPort: make(map[uint16]*ruleBits),
		anyPath: &ruleBits{}, exact: make(map[string]*ruleBits), prefixes: &trieNode{}, suffixes: &trieNode{}}
	for i := range rules {
		r := &rules[i]
		if len(r.ports) == 0 {
			x.anyPort.set(i)
		}
		for _, p := range r.ports {
			if x.byPort[p] == nil {
				x.byPort[p] = &ruleBits{}
			}
			x.byPort[p].set(i)
		}
		if len(patterns[i]) == 0 {
			x.anyPath.set(i)
		}
		for _, p := range patterns[i] {
			switch {
			case p == "*":
				x.anyPath.set(i)
			case strings.HasPrefix(p, "*"):
				x.suffixes.insert(reverse(p[1:]), i)
			case strings.HasSuffix(p, "*"):
				x.prefixes.insert(strings.TrimSuffix(p, "*"), i)
			default:
				if x.exact[p] == nil {
					x.exact[p] = &ruleBits{}
				}
				x.exact[p].set(i)
			}
		}
	}
	return x
}

// candidates returns the rules whose port and path may match.
func (x *ruleIndex) candidates(port uint16, path string) ruleBits {
	var ports, paths ruleBits
	ports.or(x.anyPort, x.words)
	if b := x.byPort[port]; b != nil {
		ports.or(b, x.words)
	}
	paths.or(x.anyPath, x.words)
	if b := x.exact[path]; b != nil {
		paths.or(b, x.words)
	}
	x.prefixes.collect(path, false, &paths, x.words)
	x.suffixes.collect(path, true, &paths, x.words)
	for i := range x.words {
		ports[i] &= paths[i]
	}
	return ports
}

// next returns the lowest rule index >= i in b, or -1.
func (b *ruleBits) next(i, words int) int {
	for w := i / 64; w < words; w++ {
		word := b[w]
		if w == i/64 {
			word &= ^uint64(0) << (i % 64)
		}
		if word != 0 {
			return w*64 + bits.TrailingZeros64(word)
		}
	}
	return -1
}

// trieNode is a radix tree over byte strings.
type trieNode struct {
	edges []trieEdge
	rules *ruleBits // rules whose pattern ends here; nil if none
}

type trieEdge struct {
	label string
	child *trieNode
}

func (n *trieNode) insert(s string, rule int) {
	for {
		if s == "" {
			if n.rules == nil {
				n.rules = &ruleBits{}
			}
			n.rules.set(rule)
			return
		}
		i := n.edgeFor(s[0])
		if i < 0 {
			n.edges = append(n.edges, trieEdge{label: s, child: &trieNode{}})
			n = n.edges[len(n.edges)-1].child
			s = ""
			continue
		}
		e := &n.edges[i]
		common := commonPrefixLen(e.label, s)
		if common < len(e.label) {
			// Split the edge at the common prefix.
			mid := &trieNode{edges: []trieEdge{{label: e.label[common:], child: e.child}}}
			e.label, e.child = e.label[:common], mid
		}
		n, s = e.child, s[common:]
	}
}

func (n *trieNode) edgeFor(b byte) int {
	for i := range n.edges {
		if n.edges[i].label[0] == b {
			return i
		}
	}
	return -1
}

func commonPrefixLen(a, b string) int {
	i := 0
	for i < len(a) && i < len(b) && a[i] == b[i] {
		i++
	}
	return i
}

// collect ORs into acc the rules of every node on s's path (every
// pattern that is a prefix of s, or with reversed true, a suffix of s).
func (n *trieNode) collect(s string, reversed bool, acc *ruleBits, words int) {
	pos := 0 // bytes of s consumed
	for {
		if n.rules != nil {
			acc.or(n.rules, words)
		}
		if pos == len(s) || len(n.edges) == 0 {
			return
		}
		i := n.edgeFor(byteAt(s, pos, reversed))
		if i < 0 {
			return
		}
		label := n.edges[i].label
		if len(label) > len(s)-pos {
			return
		}
		for j := 1; j < len(label); j++ {
			if label[j] != byteAt(s, pos+j, reversed) {
				return
			}
		}
		pos += len(label)
		n = n.edges[i].child
	}
}

func byteAt(s string, i int, reversed bool) byte {
	if reversed {
		return s[len(s)-1-i]
	}
	return s[i]
}

func reverse(s string) string {
	b := []byte(s)
	for i, j := 0, len(b)-1; i < j; i, j = i+1, j-1 {
		b[i], b[j] = b[j], b[i]
	}
	return string(b)
}
