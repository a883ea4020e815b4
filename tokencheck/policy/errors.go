package policy

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	v1 "github.com/portcullis-mesh/portcullis/tokencheck/policy/apis/v1alpha1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Problem is one thing wrong with a policy configuration.
type Problem struct {
	// File, Line and Column locate the problem in local mode; they are
	// empty/zero for objects from the Kubernetes API or when unknown.
	File   string
	Line   int
	Column int
	// Kind, Namespace and Name identify the object; empty when the
	// problem is not about one object (e.g. a YAML syntax error).
	Kind      string
	Namespace string
	Name      string
	// Field is the path of the offending field, e.g.
	// "spec.rules[0].to.paths[1]"; empty for the whole object.
	Field string
	// Message says what is wrong, lower case.
	Message string
}

// String formats the problem as "file:line:col: Kind ns/name: field: message".
func (p Problem) String() string {
	var b strings.Builder
	if p.File != "" {
		b.WriteString(p.File)
		if p.Line > 0 {
			fmt.Fprintf(&b, ":%d", p.Line)
			if p.Column > 0 {
				fmt.Fprintf(&b, ":%d", p.Column)
			}
		}
		b.WriteString(": ")
	}
	if p.Kind != "" {
		b.WriteString(p.Kind)
		b.WriteByte(' ')
		if p.Namespace != "" {
			b.WriteString(p.Namespace)
			b.WriteByte('/')
		}
		b.WriteString(p.Name)
		b.WriteString(": ")
	}
	if p.Field != "" {
		b.WriteString(p.Field)
		b.WriteString(": ")
	}
	b.WriteString(p.Message)
	return b.String()
}

// Error is a refused policy configuration: every problem found, in input
// order. Load, LoadFiles, Validate and Compile return it (wrapped or not);
// use errors.As to list the problems.
type Error struct {
	Problems []Problem
}

// Error returns the problems one per line.
func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	if len(lines) == 1 {
		return "invalid policy: " + lines[0]
	}
	return fmt.Sprintf("invalid policy (%d problems):\n  %s", len(lines), strings.Join(lines, "\n  "))
}

// sortProblems orders problems read from files by file, line and column;
// problems without a file keep their order, after the others.
func sortProblems(ps []Problem) {
	slices.SortStableFunc(ps, func(a, b Problem) int {
		if (a.File == "") != (b.File == "") {
			if a.File == "" {
				return 1
			}
			return -1
		}
		return cmp.Or(cmp.Compare(a.File, b.File), cmp.Compare(a.Line, b.Line), cmp.Compare(a.Column, b.Column))
	})
}

// objectMeta returns the ObjectMeta of one of the API kinds.
func objectMeta(o any) (*metav1.ObjectMeta, bool) {
	switch o := o.(type) {
	case *v1.Issuer:
		return &o.ObjectMeta, true
	case *v1.ClusterIssuer:
		return &o.ObjectMeta, true
	case *v1.AccessPolicy:
		return &o.ObjectMeta, true
	}
	return nil, false
}
