package policy

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// TestRuleIndexMatchesScan compares indexed evaluation (Evaluate) with the
// full scan (Explain) on random policies large enough to be indexed.
func TestRuleIndexMatchesScan(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	segs := []string{"a", "b", "ab", "api", "v1", "x.json", "y.tar.gz"}
	randPath := func() string {
		var b strings.Builder
		for range 1 + rng.IntN(3) {
			b.WriteString("/" + segs[rng.IntN(len(segs))])
		}
		return b.String()
	}
	randPattern := func() string {
		switch rng.IntN(5) {
		case 0:
			return "*"
		case 1:
			return "*." + []string{"json", "gz", "tar.gz"}[rng.IntN(3)]
		case 2:
			return randPath()
		default:
			return randPath() + []string{"/*", "*"}[rng.IntN(2)]
		}
	}
	for iter := range 50 {
		var docs []string
		for p := range 3 {
			var rules []string
			for range ruleIndexMin + rng.IntN(30) {
				var to []string
				if rng.IntN(3) > 0 {
					to = append(to, fmt.Sprintf("ports: [%d]", 8080+rng.IntN(3)))
				}
				if rng.IntN(4) > 0 {
					var pats []string
					for range 1 + rng.IntN(3) {
						pats = append(pats, fmt.Sprintf("%q", randPattern()))
					}
					to = append(to, "paths: ["+strings.Join(pats, ", ")+"]")
				}
				rule := "{to: {" + strings.Join(to, ", ") + "}"
				if rng.IntN(3) == 0 {
					rule += ", when: {roles: {anyOf: [Orders.Read]}}"
				}
				rules = append(rules, "  - "+rule+"}")
			}
			action := []string{"Allow", "Deny"}[min(p, 1)*rng.IntN(2)]
			docs = append(docs, policy(fmt.Sprintf("p%d", p), "  action: "+action+"\n  rules:\n"+strings.Join(rules, "\n")))
		}
		set := mustCompile(t, docs...)
		for range 50 {
			in := req(func(in *Input) {
				in.Port = uint16(8080 + rng.IntN(3))
				in.Path = randPath()
				if rng.IntN(3) == 0 {
					noToken(in)
				}
			})
			got, want := Evaluate(set, in), Explain(set, in).Decision
			if diff := cmp.Diff(want, got); diff != "" {
				t.Fatalf("iteration %d, port %d path %s: indexed decision differs from scan (-scan +indexed):\n%s\npolicies:\n%s",
					iter, in.Port, in.Path, diff, strings.Join(docs, "\n---\n"))
			}
		}
	}
}

func TestTrie(t *testing.T) {
	n := &trieNode{}
	for i, p := range []string{"/a/", "/a/b/", "/ab", "/", "/a/b/c"} {
		n.insert(p, i)
	}
	tests := map[string][]int{
		"/a/b/c/d": {0, 1, 3, 4},
		"/ab/x":    {2, 3},
		"/a":       {3},
		"x":        nil,
		"/a/b/":    {0, 1, 3},
	}
	for path, want := range tests {
		var acc ruleBits
		n.collect(path, false, &acc, 1)
		var got []int
		for i := acc.next(0, 1); i >= 0; i = acc.next(i+1, 1) {
			got = append(got, i)
		}
		if !cmp.Equal(want, got) {
			t.Errorf("collect(%q) = %v, want %v", path, got, want)
		}
	}
}
