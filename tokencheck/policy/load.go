package policy

import (
	"bytes"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	v1 "github.com/portcullis-mesh/portcullis/tokencheck/policy/apis/v1alpha1"
	"go.yaml.in/yaml/v3"
	kjson "sigs.k8s.io/json"
)

// maxDocumentBytes bounds one YAML file; policy files are small and a
// bound keeps alias expansion and fuzzing cheap.
const maxDocumentBytes = 8 << 20

// Objects is a whole policy configuration: every Issuer, ClusterIssuer and
// AccessPolicy in force. It comes from YAML files (Load, LoadFiles) or from
// the Kubernetes API (built by the caller); both go through the same
// validation in Validate and Compile.
type Objects struct {
	Issuers        []*v1.Issuer
	ClusterIssuers []*v1.ClusterIssuer
	AccessPolicies []*v1.AccessPolicy

	// origins maps an object (pointer) to where it was read, for error
	// messages with file and line. Objects from the API server have none.
	origins map[any]origin
}

// origin is where an object was read from.
type origin struct {
	file string
	doc  *yaml.Node // the document's root mapping
}

// Add appends o to the right list. o must be a *v1.Issuer,
// *v1.ClusterIssuer or *v1.AccessPolicy.
func (objs *Objects) Add(o any) error {
	switch o := o.(type) {
	case *v1.Issuer:
		objs.Issuers = append(objs.Issuers, o)
	case *v1.ClusterIssuer:
		objs.ClusterIssuers = append(objs.ClusterIssuers, o)
	case *v1.AccessPolicy:
		objs.AccessPolicies = append(objs.AccessPolicies, o)
	default:
		return fmt.Errorf("add object: unsupported type %T", o)
	}
	return nil
}

// Merge appends every object of other to objs, keeping their origins.
func (objs *Objects) Merge(other *Objects) {
	objs.Issuers = append(objs.Issuers, other.Issuers...)
	objs.ClusterIssuers = append(objs.ClusterIssuers, other.ClusterIssuers...)
	objs.AccessPolicies = append(objs.AccessPolicies, other.AccessPolicies...)
	for k, v := range other.origins {
		objs.setOrigin(k, v)
	}
}

func (objs *Objects) setOrigin(o any, or origin) {
	if objs.origins == nil {
		objs.origins = make(map[any]origin)
	}
	objs.origins[o] = or
}

// Load reads a multi-document YAML stream of portcullis.dev/v1alpha1
// objects. name is used in error messages (a file name). Decoding is
// strict: unknown and duplicate fields are refused. Objects without a
// namespace are placed in "default". Load does not validate the objects
// beyond their shape; Compile does.
func Load(name string, data []byte) (*Objects, error) {
	objs := &Objects{}
	if len(data) > maxDocumentBytes {
		return nil, &Error{Problems: []Problem{{File: name, Message: fmt.Sprintf("file is larger than %d bytes", maxDocumentBytes)}}}
	}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var problems []Problem
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			// A syntax error ends the stream: the decoder cannot resync.
			problems = append(problems, yamlProblem(name, err))
			break
		}
		if len(doc.Content) == 0 || (doc.Content[0].Kind == yaml.ScalarNode && doc.Content[0].Tag == "!!null") {
			continue // an empty document, e.g. a trailing "---"
		}
		problems = append(problems, objs.loadDocument(name, doc.Content[0])...)
	}
	if len(problems) > 0 {
		return nil, &Error{Problems: problems}
	}
	return objs, nil
}

// LoadFiles loads every named file, or every *.yaml / *.yml file of a named
// directory (not recursively, in name order, skipping dot files), into one
// Objects.
func LoadFiles(paths ...string) (*Objects, error) {
	objs, _, err := loadFiles(paths)
	return objs, err
}

// loadFiles is LoadFiles that also returns a digest of the names and
// contents read, so a watcher can skip reloads that change nothing.
func loadFiles(paths []string) (*Objects, [sha256.Size]byte, error) {
	var sum [sha256.Size]byte
	files, err := expandPaths(paths)
	if err != nil {
		return nil, sum, err
	}
	h := sha256.New()
	all := &Objects{}
	var problems []Problem
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return nil, sum, fmt.Errorf("read policy file: %w", err)
		}
		fmt.Fprintf(h, "%d:%s%d:", len(f), f, len(data))
		h.Write(data)
		objs, err := Load(f, data)
		var perr *Error
		switch {
		case errors.As(err, &perr):
			problems = append(problems, perr.Problems...)
		case err != nil:
			return nil, sum, err
		default:
			all.Merge(objs)
		}
	}
	h.Sum(sum[:0])
	if len(problems) > 0 {
		return nil, sum, &Error{Problems: problems}
	}
	return all, sum, nil
}

// expandPaths replaces directories by their YAML files.
func expandPaths(paths []string) ([]string, error) {
	var files []string
	for _, p := range paths {
		st, err := os.Stat(p)
		if err != nil {
			return nil, fmt.Errorf("read policy path: %w", err)
		}
		if !st.IsDir() {
			files = append(files, p)
			continue
		}
		entries, err := os.ReadDir(p)
		if err != nil {
			return nil, fmt.Errorf("read policy directory: %w", err)
		}
		for _, e := range entries {
			if !isYAMLName(e.Name()) {
				continue
			}
			f := filepath.Join(p, e.Name())
			// Follow symbolic links: a ConfigMap volume's files are links
			// into its ..data directory.
			if st, err := os.Stat(f); err == nil && st.Mode().IsRegular() {
				files = append(files, f)
			}
		}
	}
	return files, nil
}

func isYAMLName(name string) bool {
	if strings.HasPrefix(name, ".") {
		return false // editor swap files, Kubernetes ConfigMap ..data links
	}
	ext := filepath.Ext(name)
	return ext == ".yaml" || ext == ".yml"
}

// typeMeta is read first to pick the Go type of a document.
type typeMeta struct {
	APIVersion string `json:"apiVersion" yaml:"apiVersion"`
	Kind       string `json:"kind" yaml:"kind"`
}

func (objs *Objects) loadDocument(file string, root *yaml.Node) []Problem {
	at := func(path, msg string) []Problem {
		n := nodeAt(root, path)
		return []Problem{{File: file, Line: n.Line, Column: n.Column, Field: path, Message: msg}}
	}
	if root.Kind != yaml.MappingNode {
		return at("", "document is not a mapping")
	}
	var v any
	if err := root.Decode(&v); err != nil {
		return []Problem{yamlProblem(file, err)}
	}
	data, err := json.Marshal(v)
	if err != nil {
		return at("", fmt.Sprintf("document cannot be represented as JSON: %v", err))
	}
	var tm typeMeta
	if err := json.Unmarshal(data, &tm); err != nil {
		return at("", fmt.Sprintf("read apiVersion and kind: %v", err))
	}
	if isList(tm) {
		return objs.loadList(file, root)
	}
	if tm.APIVersion != v1.GroupVersion.String() {
		return at("apiVersion", fmt.Sprintf("unsupported apiVersion %q, want %q", tm.APIVersion, v1.GroupVersion.String()))
	}
	var obj any
	switch tm.Kind {
	case v1.KindIssuer:
		obj = &v1.Issuer{}
	case v1.KindClusterIssuer:
		obj = &v1.ClusterIssuer{}
	case v1.KindAccessPolicy:
		obj = &v1.AccessPolicy{}
	default:
		return at("kind", fmt.Sprintf("unsupported kind %q, want one of %s, %s, %s", tm.Kind, v1.KindIssuer, v1.KindClusterIssuer, v1.KindAccessPolicy))
	}
	strict, err := kjson.UnmarshalStrict(data, obj)
	if err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) {
			return at(te.Field, fmt.Sprintf("cannot use %s as %s", te.Value, te.Type))
		}
		return at("", fmt.Sprintf("decode: %v", err))
	}
	if len(strict) > 0 {
		var problems []Problem
		for _, e := range strict {
			path := ""
			var fe kjson.FieldError
			if errors.As(e, &fe) {
				path = fe.FieldPath()
			}
			msg := e.Error()
			if i := strings.IndexByte(msg, ' '); i > 0 && strings.HasPrefix(msg[i:], " field") {
				msg = msg[:i] + " field" // "unknown field" / "duplicate field": the path is reported apart
			}
			problems = append(problems, at(path, msg)...)
		}
		return problems
	}
	if m, ok := objectMeta(obj); ok && m.Namespace == "" && tm.Kind != v1.KindClusterIssuer {
		m.Namespace = "default"
	}
	objs.setOrigin(obj, origin{file: file, doc: root})
	_ = objs.Add(obj) // obj is one of the supported types
	return nil
}

// isList reports whether a document is a list of objects, as
// `kubectl get -o yaml` writes (v1 List, or one of our *List kinds).
func isList(tm typeMeta) bool {
	return (tm.APIVersion == "v1" && tm.Kind == "List") ||
		(tm.APIVersion == v1.GroupVersion.String() && strings.HasSuffix(tm.Kind, "List"))
}

// loadList loads the items of a list document; lists do not nest.
func (objs *Objects) loadList(file string, root *yaml.Node) []Problem {
	_, items := child(root, pathSeg{key: "items", idx: -1})
	if items == nil || items.Kind != yaml.SequenceNode {
		n := root
		if items != nil {
			n = items
		}
		return []Problem{{File: file, Line: n.Line, Column: n.Column, Field: "items", Message: "a list needs an items sequence"}}
	}
	var problems []Problem
	for _, item := range items.Content {
		if item.Kind == yaml.MappingNode {
			var tm typeMeta
			if err := item.Decode(&tm); err == nil && isList(tm) {
				problems = append(problems, Problem{File: file, Line: item.Line, Column: item.Column, Message: "lists do not nest"})
				continue
			}
		}
		problems = append(problems, objs.loadDocument(file, item)...)
	}
	return problems
}

// yamlProblem turns a go-yaml error ("yaml: line 3: ..." or "yaml:
// unmarshal errors:\n  line 3: ...") into a Problem.
func yamlProblem(file string, err error) Problem {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if rest, ok := strings.CutPrefix(msg, "unmarshal errors:\n"); ok {
		msg = strings.TrimSpace(strings.ReplaceAll(rest, "\n ", ";"))
	}
	p := Problem{File: file}
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if i := strings.IndexByte(rest, ':'); i > 0 {
			if n, err := strconv.Atoi(rest[:i]); err == nil {
				p.Line = n
				msg = strings.TrimSpace(rest[i+1:])
			}
		}
	}
	p.Message = msg
	return p
}

// nodeAt finds the YAML node of a field path such as
// "spec.rules[1].to.paths[0]", or the closest existing ancestor. For a
// mapping field it returns the key, where an editor should point. A path
// without indices (JSON type errors omit them) picks the first element of
// a list that has the next key.
func nodeAt(root *yaml.Node, path string) *yaml.Node {
	n := root
	segs := splitPath(path)
	for i, seg := range segs {
		key, val := child(n, seg)
		if val == nil {
			break
		}
		if i == len(segs)-1 && key != nil {
			return key
		}
		n = val
	}
	return n
}

// pathSeg is a key ("rules") or an index (idx >= 0).
type pathSeg struct {
	key string
	idx int
}

func splitPath(path string) []pathSeg {
	var segs []pathSeg
	for part := range strings.SplitSeq(path, ".") {
		if part == "" {
			continue
		}
		key, rest, _ := strings.Cut(part, "[")
		if key != "" {
			segs = append(segs, pathSeg{key: key, idx: -1})
		}
		for rest != "" {
			num, after, _ := strings.Cut(rest, "]")
			if i, err := strconv.Atoi(num); err == nil {
				segs = append(segs, pathSeg{idx: i})
			} else {
				segs = append(segs, pathSeg{key: num, idx: -1}) // map key, e.g. matchLabels[app]
			}
			rest = strings.TrimPrefix(after, "[")
		}
	}
	return segs
}

// child returns the key (for a mapping) and value node of seg in n.
func child(n *yaml.Node, seg pathSeg) (key, val *yaml.Node) {
	for depth := 0; n.Kind == yaml.AliasNode && n.Alias != nil && depth < 16; depth++ {
		n = n.Alias
	}
	switch {
	case n.Kind == yaml.SequenceNode && seg.idx >= 0:
		if seg.idx < len(n.Content) {
			return nil, n.Content[seg.idx]
		}
	case n.Kind == yaml.SequenceNode:
		for _, el := range n.Content {
			if k, v := child(el, seg); v != nil {
				return k, v
			}
		}
	case n.Kind == yaml.MappingNode && seg.idx < 0:
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == seg.key {
				return n.Content[i], n.Content[i+1]
			}
		}
	}
	return nil, nil
}
