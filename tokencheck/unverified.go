package tokencheck

import (
	"errors"
	"fmt"
	"strings"
)

// DecodeUnverified decodes the header and payload of the compact JWS raw as
// Validate's parser reads them — strict base64url without padding or line
// breaks, JSON objects without duplicate keys, invalid UTF-8 or excessive
// nesting — and verifies nothing else: no signature, no header rule, no
// claim. It is for display and offline explain, which must not read a token
// any differently from the data path. Numbers are float64, as
// ClaimsFromMap expects.
func DecodeUnverified(raw string) (header, payload map[string]any, err error) {
	parts := strings.Split(raw, ".")
	if len(parts) != 3 {
		return nil, nil, errors.New("not a compact JWS: want three dot-separated parts")
	}
	if strings.ContainsAny(raw, "\r\n") {
		return nil, nil, errors.New("line break in token")
	}
	dec := func(what, s string) (map[string]any, error) {
		b, err := b64.DecodeString(s)
		if err != nil {
			return nil, fmt.Errorf("decode %s: bad base64url: %w", what, err)
		}
		m, err := parseJSONObject(string(b))
		if err != nil {
			return nil, fmt.Errorf("decode %s: not a JSON object (strictly: no duplicate keys, valid UTF-8)", what)
		}
		return m, nil
	}
	if header, err = dec("header", parts[0]); err != nil {
		return nil, nil, err
	}
	if payload, err = dec("payload", parts[1]); err != nil {
		return nil, nil, err
	}
	return header, payload, nil
}
