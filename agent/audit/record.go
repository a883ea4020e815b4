// Package audit writes one JSON record per access decision the verifier
// makes, asynchronously and without ever holding up the request path for
// long, and fans the same records out to live subscribers (the debug API's
// "tail decisions").
//
// Records never carry a token, a query string or a header value: only the
// bounded facts an operator needs to answer "who called what, and why was it
// allowed or refused". Under overload, allowed records are dropped first and
// counted; denied records are kept unless the writer is stuck for longer than
// a short, bounded wait.
package audit

import (
	"strconv"
	"time"
	"unicode/utf8"
)

// Decision is the outcome recorded for a request.
type Decision string

const (
	// Allow: the request was forwarded because policy allowed it.
	Allow Decision = "allow"
	// Deny: policy refused the request. In audit mode the request was still
	// forwarded; Record.Mode says which.
	Deny Decision = "deny"
)

// Mode says whether a decision was enforced or only recorded.
type Mode string

const (
	// Enforce: the decision was applied.
	Enforce Mode = "enforce"
	// AuditOnly: the decision was recorded and the request forwarded anyway.
	AuditOnly Mode = "audit"
)

// Record is one access decision. Field order and JSON names are the wire
// format (see testdata/record.golden); add fields at the end.
type Record struct {
	// Time is when the decision was made.
	Time time.Time
	// Decision, Reason, Policy, Rule and Mode come from the authorizer;
	// Reason is a bounded snake_case enum, empty for a plain allow.
	Decision Decision
	Reason   string
	Policy   string
	Rule     string
	Mode     Mode
	// Source is the caller's SPIFFE ID or "anonymous"; SourceAddr is the
	// caller's address as the verifier saw it.
	Source     string
	SourceAddr string
	// Workload is the destination pod ("namespace/name") and Port the
	// destination port.
	Workload string
	Port     uint16
	// Protocol is "http/1.1", "h2", "grpc" or "tcp" (passthrough ports).
	Protocol string
	// Method and Path of the request; Path never includes the query.
	Method string
	Path   string
	// Status is the status class of the verifier's own refusal: 401, 403,
	// 400, 405 or 431; 0 when the request was forwarded. A refused gRPC call
	// is answered on the wire with HTTP 200 and grpc-status 16
	// (UNAUTHENTICATED) or 7 (PERMISSION_DENIED), as gRPC requires; its
	// record still says 401 or 403, so records compare across protocols.
	Status int
	// Token facts, empty when no valid token was presented: issuer (`iss`),
	// tenant (`tid`), object ID (`oid`), subject (`sub`) and client
	// application (`azp` or `appid`).
	Issuer   string
	Tenant   string
	ObjectID string
	Subject  string
	ClientID string
}

// AppendJSON appends r as one JSON object followed by a newline. Empty
// optional fields are omitted. It is hand-written because it runs once per
// request on a busy node: no reflection, no allocation beyond growing buf.
func (r *Record) AppendJSON(buf []byte) []byte {
	buf = append(buf, `{"time":"`...)
	buf = r.Time.UTC().AppendFormat(buf, time.RFC3339Nano)
	buf = append(buf, '"')
	buf = appendField(buf, "decision", string(r.Decision))
	buf = appendField(buf, "reason", r.Reason)
	buf = appendField(buf, "policy", r.Policy)
	buf = appendField(buf, "rule", r.Rule)
	buf = appendField(buf, "mode", string(r.Mode))
	buf = appendField(buf, "source", r.Source)
	buf = appendField(buf, "source_addr", r.SourceAddr)
	buf = appendField(buf, "workload", r.Workload)
	if r.Port != 0 {
		buf = append(buf, `,"port":`...)
		buf = strconv.AppendUint(buf, uint64(r.Port), 10)
	}
	buf = appendField(buf, "protocol", r.Protocol)
	buf = appendField(buf, "method", r.Method)
	buf = appendField(buf, "path", r.Path)
	if r.Status != 0 {
		buf = append(buf, `,"status":`...)
		buf = strconv.AppendInt(buf, int64(r.Status), 10)
	}
	buf = appendField(buf, "issuer", r.Issuer)
	buf = appendField(buf, "tenant", r.Tenant)
	buf = appendField(buf, "oid", r.ObjectID)
	buf = appendField(buf, "sub", r.Subject)
	buf = appendField(buf, "client_id", r.ClientID)
	return append(buf, "}\n"...)
}

func appendField(buf []byte, name, value string) []byte {
	if value == "" {
		return buf
	}
	buf = append(buf, ',', '"')
	buf = append(buf, name...)
	buf = append(buf, '"', ':')
	return appendString(buf, value)
}

const hex = "0123456789abcdef"

// jsonSafe tells the ASCII bytes appendString copies as they are: one table
// lookup per byte instead of six comparisons.
var jsonSafe = func() (t [utf8.RuneSelf]bool) {
	for b := 0x20; b < utf8.RuneSelf; b++ {
		t[b] = b != '"' && b != '\\' && b != '<' && b != '>' && b != '&'
	}
	return t
}()

// appendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD, and
// <, > and & are escaped like encoding/json does so records are safe to
// embed in HTML log viewers.
func appendString(buf []byte, s string) []byte {
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if jsonSafe[b] {
				i++
				continue
			}
			buf = append(buf, s[start:i]...)
			switch b {
			case '"', '\\':
				buf = append(buf, '\\', b)
			case '\n':
				buf = append(buf, '\\', 'n')
			case '\r':
				buf = append(buf, '\\', 'r')
			case '\t':
				buf = append(buf, '\\', 't')
			default:
				buf = append(buf, '\\', 'u', '0', '0', hex[b>>4], hex[b&0xf])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			buf = append(buf, s[start:i]...)
			buf = append(buf, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			buf = append(buf, s[start:i]...)
			buf = append(buf, '\\', 'u', '2', '0', '2', hex[c&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}
