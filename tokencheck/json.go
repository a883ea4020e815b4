package tokencheck

import (
	"errors"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// This file is a small strict JSON decoder for token headers and payloads.
// encoding/json costs more than half an RSA verification for a typical
// payload (most of it allocation); this one returns the same values
// (map[string]any, []any, string, float64, bool, nil) at a fraction of the
// cost by slicing strings out of the input instead of copying them.
//
// It is stricter than encoding/json where leniency would let two parsers
// disagree about a token: duplicate object keys, invalid UTF-8 and
// nesting deeper than maxJSONDepth are errors. FuzzParseToken checks that
// whatever it accepts, encoding/json decodes to the same value.

const maxJSONDepth = 32

var errJSON = errors.New("invalid JSON")

type jsonParser struct {
	s     string
	i     int
	depth int
}

// parseJSONObject decodes s, which must hold exactly one JSON object. The
// strings returned share s's memory.
func parseJSONObject(s string) (map[string]any, error) {
	p := jsonParser{s: s}
	p.ws()
	if p.i >= len(p.s) || p.s[p.i] != '{' {
		return nil, errJSON
	}
	// Access tokens have about 20 claims: size the top-level map for that.
	v, err := p.object(24)
	if err != nil {
		return nil, err
	}
	p.ws()
	if p.i != len(p.s) {
		return nil, errJSON
	}
	return v.(map[string]any), nil
}

func (p *jsonParser) ws() {
	for p.i < len(p.s) {
		switch p.s[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

func (p *jsonParser) value() (any, error) {
	if p.i >= len(p.s) {
		return nil, errJSON
	}
	switch c := p.s[p.i]; {
	case c == '{':
		return p.object(4)
	case c == '[':
		return p.array()
	case c == '"':
		return p.str()
	case c == '-' || '0' <= c && c <= '9':
		return p.number()
	case p.lit("true"):
		return true, nil
	case p.lit("false"):
		return false, nil
	case p.lit("null"):
		return nil, nil
	}
	return nil, errJSON
}

func (p *jsonParser) lit(w string) bool {
	if len(p.s)-p.i >= len(w) && p.s[p.i:p.i+len(w)] == w {
		p.i += len(w)
		return true
	}
	return false
}

func (p *jsonParser) object(size int) (any, error) {
	if p.depth++; p.depth > maxJSONDepth {
		return nil, errJSON
	}
	p.i++ // {
	m := make(map[string]any, size)
	p.ws()
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
		p.depth--
		return m, nil
	}
	for {
		p.ws()
		if p.i >= len(p.s) || p.s[p.i] != '"' {
			return nil, errJSON
		}
		k, err := p.str()
		if err != nil {
			return nil, err
		}
		p.ws()
		if p.i >= len(p.s) || p.s[p.i] != ':' {
			return nil, errJSON
		}
		p.i++
		p.ws()
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		n := len(m)
		if m[k] = v; len(m) == n {
			return nil, errJSON // duplicate key
		}
		p.ws()
		if p.i >= len(p.s) {
			return nil, errJSON
		}
		switch p.s[p.i] {
		case ',':
			p.i++
		case '}':
			p.i++
			p.depth--
			return m, nil
		default:
			return nil, errJSON
		}
	}
}

func (p *jsonParser) array() (any, error) {
	if p.depth++; p.depth > maxJSONDepth {
		return nil, errJSON
	}
	p.i++ // [
	a := make([]any, 0, 4)
	p.ws()
	if p.i < len(p.s) && p.s[p.i] == ']' {
		p.i++
		p.depth--
		return a, nil
	}
	for {
		p.ws()
		v, err := p.value()
		if err != nil {
			return nil, err
		}
		a = append(a, v)
		p.ws()
		if p.i >= len(p.s) {
			return nil, errJSON
		}
		switch p.s[p.i] {
		case ',':
			p.i++
		case ']':
			p.i++
			p.depth--
			return a, nil
		default:
			return nil, errJSON
		}
	}
}

// str decodes the string starting at the opening quote.
func (p *jsonParser) str() (string, error) {
	p.i++ // "
	start := p.i
	ascii := true
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == '"':
			s := p.s[start:p.i]
			p.i++
			if !ascii && !utf8.ValidString(s) {
				return "", errJSON
			}
			return s, nil
		case c >= utf8.RuneSelf:
			ascii = false
		case c == '\\':
			return p.strEscaped(start)
		case c < 0x20:
			return "", errJSON
		}
		p.i++
	}
	return "", errJSON
}

// strEscaped continues str for strings with escapes, which need a copy.
func (p *jsonParser) strEscaped(start int) (string, error) {
	b := make([]byte, 0, p.i-start+16)
	b = append(b, p.s[start:p.i]...)
	for p.i < len(p.s) {
		c := p.s[p.i]
		switch {
		case c == '"':
			p.i++
			if !utf8.Valid(b) {
				return "", errJSON
			}
			return string(b), nil
		case c < 0x20:
			return "", errJSON
		case c != '\\':
			b = append(b, c)
			p.i++
			continue
		}
		if p.i+1 >= len(p.s) {
			return "", errJSON
		}
		e := p.s[p.i+1]
		p.i += 2
		switch e {
		case '"', '\\', '/':
			b = append(b, e)
		case 'b':
			b = append(b, '\b')
		case 'f':
			b = append(b, '\f')
		case 'n':
			b = append(b, '\n')
		case 'r':
			b = append(b, '\r')
		case 't':
			b = append(b, '\t')
		case 'u':
			r, ok := p.hex4()
			if !ok {
				return "", errJSON
			}
			if utf16.IsSurrogate(r) {
				// A valid pair becomes one rune; a lone surrogate becomes
				// U+FFFD, as encoding/json does.
				r2 := rune(-1)
				if p.i+1 < len(p.s) && p.s[p.i] == '\\' && p.s[p.i+1] == 'u' {
					save := p.i
					p.i += 2
					var ok2 bool
					if r2, ok2 = p.hex4(); !ok2 {
						return "", errJSON
					}
					if d := utf16.DecodeRune(r, r2); d != utf8.RuneError {
						r = d
					} else {
						p.i = save
						r = utf8.RuneError
					}
				} else {
					r = utf8.RuneError
				}
			}
			b = utf8.AppendRune(b, r)
		default:
			return "", errJSON
		}
	}
	return "", errJSON
}

func (p *jsonParser) hex4() (rune, bool) {
	if len(p.s)-p.i < 4 {
		return 0, false
	}
	var r rune
	for _, c := range []byte(p.s[p.i : p.i+4]) {
		r <<= 4
		switch {
		case '0' <= c && c <= '9':
			r |= rune(c - '0')
		case 'a' <= c && c <= 'f':
			r |= rune(c - 'a' + 10)
		case 'A' <= c && c <= 'F':
			r |= rune(c - 'A' + 10)
		default:
			return 0, false
		}
	}
	p.i += 4
	return r, true
}

// number checks the RFC 8259 number grammar, then converts.
func (p *jsonParser) number() (any, error) {
	start := p.i
	if p.s[p.i] == '-' {
		p.i++
	}
	switch {
	case p.i < len(p.s) && p.s[p.i] == '0':
		p.i++
	case p.i < len(p.s) && '1' <= p.s[p.i] && p.s[p.i] <= '9':
		p.digits()
	default:
		return nil, errJSON
	}
	if p.i < len(p.s) && p.s[p.i] == '.' {
		p.i++
		if p.digits() == 0 {
			return nil, errJSON
		}
	}
	if p.i < len(p.s) && (p.s[p.i] == 'e' || p.s[p.i] == 'E') {
		p.i++
		if p.i < len(p.s) && (p.s[p.i] == '+' || p.s[p.i] == '-') {
			p.i++
		}
		if p.digits() == 0 {
			return nil, errJSON
		}
	}
	f, err := strconv.ParseFloat(p.s[start:p.i], 64)
	if err != nil {
		// Out of float64 range: encoding/json refuses it too.
		return nil, errJSON
	}
	return f, nil
}

func (p *jsonParser) digits() int {
	n := 0
	for p.i < len(p.s) && '0' <= p.s[p.i] && p.s[p.i] <= '9' {
		p.i++
		n++
	}
	return n
}

// parseHeaderJSON decodes a JOSE header object into h without building a
// map: headers are small and their members mostly known. The same
// strictness applies (duplicate members are an error).
func parseHeaderJSON(s string, h *header) error {
	p := jsonParser{s: s}
	p.ws()
	if p.i >= len(p.s) || p.s[p.i] != '{' {
		return errJSON
	}
	p.i++
	p.depth = 1
	var seen [12]string
	nseen := 0
	var hasAlg bool
	p.ws()
	if p.i < len(p.s) && p.s[p.i] == '}' {
		p.i++
	} else {
		for {
			p.ws()
			if p.i >= len(p.s) || p.s[p.i] != '"' {
				return errJSON
			}
			k, err := p.str()
			if err != nil {
				return err
			}
			for _, sk := range seen[:nseen] {
				if sk == k {
					return errJSON
				}
			}
			if nseen == len(seen) {
				return errJSON // no legitimate header has this many members
			}
			seen[nseen] = k
			nseen++
			p.ws()
			if p.i >= len(p.s) || p.s[p.i] != ':' {
				return errJSON
			}
			p.i++
			p.ws()
			if p.i >= len(p.s) {
				return errJSON
			}
			switch k {
			case "alg", "kid":
				if p.s[p.i] != '"' {
					return errJSON
				}
				v, err := p.str()
				if err != nil {
					return err
				}
				if k == "alg" {
					h.Alg, hasAlg = v, true
				} else {
					h.Kid = v
				}
			default:
				switch k {
				case "crit":
					h.Present.Crit = true
				case "b64":
					h.Present.B64 = true
				case "nonce":
					h.Present.Nonce = true
				case "jwk", "jku", "x5u", "x5c":
					h.Present.EmbeddedKey = true
				}
				if p.s[p.i] == '"' {
					_, err = p.str() // typ, x5t, cty…: no allocation
				} else {
					_, err = p.value()
				}
				if err != nil {
					return err
				}
			}
			p.ws()
			if p.i >= len(p.s) {
				return errJSON
			}
			if p.s[p.i] == '}' {
				p.i++
				break
			}
			if p.s[p.i] != ',' {
				return errJSON
			}
			p.i++
		}
	}
	p.ws()
	if p.i != len(p.s) || !hasAlg {
		return errJSON
	}
	return nil
}
