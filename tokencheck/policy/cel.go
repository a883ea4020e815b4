package policy

import (
	"fmt"
	"net/http"
	"reflect"
	"strings"
	"sync"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/ext"
	"github.com/google/cel-go/interpreter"
	"github.com/portcullis-mesh/portcullis/tokencheck/policy/internal/celvars"
)

const (
	// celCostLimit bounds the runtime cost of one expression evaluation;
	// past it the evaluation fails and the rule fails closed. Claim checks
	// cost tens of units; 10,000 allows loops over claim lists and stops
	// quadratic ones (a few milliseconds at most).
	celCostLimit = 10_000
	// celMaxNodes bounds the size of an expression's syntax tree.
	celMaxNodes = 2_000
)

// celEnv returns the environment every AccessPolicy expression is compiled
// in. It is built once: an Env is immutable and safe for concurrent use.
var celEnv = sync.OnceValues(newCELEnv)

func newCELEnv() (*cel.Env, error) {
	env, err := cel.NewEnv(
		ext.NativeTypes(reflect.TypeFor[celvars.Request](), reflect.TypeFor[celvars.Source](), ext.ParseStructTags(true)),
		cel.Variable("claims", cel.MapType(cel.StringType, cel.DynType)),
		cel.Variable("request", cel.ObjectType("celvars.Request")),
		cel.Variable("source", cel.ObjectType("celvars.Source")),
		cel.ParserExpressionSizeLimit(4096),
		cel.ParserRecursionLimit(64),
		cel.ExpressionNodeLimit(celMaxNodes),
		ext.Strings(),
	)
	if err != nil {
		return nil, fmt.Errorf("create cel environment: %w", err)
	}
	return env, nil
}

// compiledExpr is a checked CEL program.
type compiledExpr struct {
	prg cel.Program
	// usesClaims is true when the expression reads `claims`: the rule then
	// needs a valid token.
	usesClaims bool
}

// exprCache keeps compiled expressions across Compile calls: a live
// update recompiles the whole configuration, but only new expressions
// need the CEL compiler (hundreds of microseconds each). Programs are
// immutable and safe for concurrent use, so Sets share them.
var exprCache struct {
	mu sync.Mutex
	m  map[string]exprResult
}

type exprResult struct {
	expr *compiledExpr
	err  error
}

// exprCacheMax bounds exprCache; when full it starts over.
const exprCacheMax = 16384

// compileExprCached is compileExpr through exprCache. All expressions are
// compiled in the one celEnv, so the source text is the key.
func compileExprCached(env *cel.Env, src string) (*compiledExpr, error) {
	exprCache.mu.Lock()
	r, ok := exprCache.m[src]
	exprCache.mu.Unlock()
	if ok {
		return r.expr, r.err
	}
	e, err := compileExpr(env, src)
	exprCache.mu.Lock()
	defer exprCache.mu.Unlock()
	if exprCache.m == nil || len(exprCache.m) >= exprCacheMax {
		exprCache.m = make(map[string]exprResult)
	}
	exprCache.m[src] = exprResult{e, err}
	return e, err
}

func compileExpr(env *cel.Env, src string) (*compiledExpr, error) {
	ast, iss := env.Compile(src)
	if iss != nil && iss.Err() != nil {
		msgs := make([]string, 0, len(iss.Errors()))
		for _, e := range iss.Errors() {
			msgs = append(msgs, fmt.Sprintf("column %d: %s", e.Location.Column()+1, e.Message))
		}
		return nil, fmt.Errorf("invalid CEL: %s", strings.Join(msgs, "; "))
	}
	if !ast.OutputType().IsExactType(cel.BoolType) {
		return nil, fmt.Errorf("expression returns %s, want bool", ast.OutputType())
	}
	uses := false
	for _, ref := range ast.NativeRep().ReferenceMap() {
		if ref.Name == "claims" {
			uses = true
		}
	}
	prg, err := env.Program(ast, cel.CostLimit(celCostLimit), cel.InterruptCheckFrequency(100))
	if err != nil {
		return nil, fmt.Errorf("plan: %w", err)
	}
	return &compiledExpr{prg: prg, usesClaims: uses}, nil
}

// celActivation resolves the three variables lazily.
type celActivation struct {
	claims  map[string]any
	request *celvars.Request
	source  *celvars.Source
}

var emptyClaims = map[string]any{}

func (a *celActivation) ResolveName(name string) (any, bool) {
	switch name {
	case "claims":
		return a.claims, true
	case "request":
		return a.request, true
	case "source":
		return a.source, true
	}
	return nil, false
}

func (a *celActivation) Parent() interpreter.Activation { return nil }

// eval runs the expression; an error (including the cost limit) is
// returned so the caller can fail closed.
func (e *compiledExpr) eval(in *Input) (bool, error) {
	act := &celActivation{
		claims: emptyClaims,
		request: &celvars.Request{
			Method:  in.Method,
			Path:    in.Path,
			Host:    in.Host,
			Headers: flattenHeaders(in.Headers),
		},
		source: &celvars.Source{
			Identity:       in.Source.String(),
			Namespace:      in.Source.Namespace,
			ServiceAccount: in.Source.ServiceAccount,
			ClientID:       in.Source.ClientID,
			Anonymous:      in.Source.Anonymous,
		},
	}
	if in.Claims != nil && in.Claims.Raw != nil {
		act.claims = in.Claims.Raw
	}
	out, _, err := e.prg.Eval(act)
	if err != nil {
		return false, err
	}
	b, ok := out.(types.Bool)
	if !ok {
		return false, fmt.Errorf("expression returned %s, want bool", out.Type())
	}
	return bool(b), nil
}

func flattenHeaders(h http.Header) map[string]string {
	m := make(map[string]string, len(h))
	for k, v := range h {
		m[strings.ToLower(k)] = strings.Join(v, ",")
	}
	return m
}
