package tokencheck

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"math/big"
	"slices"
	"strings"
	"unsafe"
)

// b64 decodes strictly: no padding, URL alphabet only, zero trailing bits.
// Go's decoder skips CR and LF, so callers check the alphabet first.
var b64 = base64.RawURLEncoding.Strict()

// header is what we use of the JOSE header of a compact JWS.
type header struct {
	Alg string
	Kid string
	// Present lists members whose mere presence refuses the token.
	Present struct{ Crit, B64, Nonce, EmbeddedKey bool }
}

// token is a parsed, not yet verified, compact JWS.
type token struct {
	hdr          header
	signingInput string // header.payload, what the signature covers
	sig          []byte
	claims       *Claims
	// exp, nbf, iat in Unix seconds; hasNbf/hasIat say whether present.
	exp, nbf, iat  int64
	hasNbf, hasIat bool
}

// parseToken splits, decodes and checks the shape of raw. It trusts
// nothing: the result still needs its issuer, key and signature checked.
func parseToken(raw string) (*token, Reason, error) {
	d1 := strings.IndexByte(raw, '.')
	if d1 < 0 {
		return nil, ReasonMalformed, &Error{ReasonMalformed, "not a compact JWS: no '.'"}
	}
	d2 := strings.IndexByte(raw[d1+1:], '.')
	if d2 < 0 {
		return nil, ReasonMalformed, &Error{ReasonMalformed, "not a compact JWS: one '.'"}
	}
	d2 += d1 + 1
	if strings.IndexByte(raw[d2+1:], '.') >= 0 {
		return nil, ReasonMalformed, &Error{ReasonMalformed, "not a compact JWS: more than two '.' (JWE?)"}
	}
	h64, p64, s64 := raw[:d1], raw[d1+1:d2], raw[d2+1:]
	if h64 == "" || p64 == "" || s64 == "" {
		return nil, ReasonMalformed, &Error{ReasonMalformed, "empty JWS part"}
	}
	// The strict decoder refuses every character outside the base64url
	// alphabet (padding and +/ included) except CR and LF, which it skips.
	if strings.IndexByte(raw, '\n') >= 0 || strings.IndexByte(raw, '\r') >= 0 {
		return nil, ReasonMalformed, &Error{ReasonMalformed, "line break in token"}
	}
	t := &token{signingInput: raw[:d2]}
	// One buffer for the three decoded parts; the JSON decoder slices
	// strings out of it, so it is never written after decoding.
	buf := make([]byte, b64.DecodedLen(len(h64))+b64.DecodedLen(len(p64))+b64.DecodedLen(len(s64)))
	n, err := b64.Decode(buf, bytesOf(h64))
	if err != nil {
		return nil, ReasonMalformed, &Error{ReasonMalformed, "header: bad base64url"}
	}
	if err := parseHeaderJSON(stringOf(buf[:n]), &t.hdr); err != nil {
		return nil, ReasonMalformed, &Error{ReasonMalformed, "header: not a JSON object with a string alg"}
	}
	if r, err := checkHeader(&t.hdr); err != nil {
		return nil, r, err
	}
	buf = buf[n:]
	n, err = b64.Decode(buf, bytesOf(p64))
	if err != nil {
		return nil, ReasonMalformed, &Error{ReasonMalformed, "payload: bad base64url"}
	}
	payload := buf[:n:n]
	buf = buf[n:]
	if n, err = b64.Decode(buf, bytesOf(s64)); err != nil {
		return nil, ReasonMalformed, &Error{ReasonMalformed, "signature: bad base64url"}
	}
	t.sig = buf[:n:n]
	m, err := parseJSONObject(stringOf(payload))
	if err != nil {
		return nil, ReasonMalformed, &Error{ReasonMalformed, "payload: not a JSON object"}
	}
	if r, err := t.fill(m); err != nil {
		return nil, r, err
	}
	return t, ReasonNone, nil
}

// checkHeader refuses what no issuer may use, before any issuer is chosen.
func checkHeader(h *header) (Reason, error) {
	switch {
	case h.Present.EmbeddedKey:
		return refuse(ReasonEmbeddedKey, "header carries jwk, jku, x5u or x5c")
	case h.Present.Crit || h.Present.B64:
		return refuse(ReasonCritUnsupported, "header has crit or b64")
	case !slices.Contains(supportedAlgs, h.Alg):
		// none, HS*, EdDSA, and anything invented.
		return refuse(ReasonAlgNotAllowed, "alg %q", clip(h.Alg))
	case h.Kid == "":
		return refuse(ReasonMalformed, "header has no kid")
	case h.Present.Nonce:
		return refuse(ReasonGraphToken, "header has a nonce: a token for Microsoft Graph, not for this API")
	}
	return ReasonNone, nil
}

// clip bounds attacker-chosen strings placed in error details.
func clip(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// fill types the claims of m into t.claims and refuses a token without
// exp or iss.
func (t *token) fill(m map[string]any) (Reason, error) {
	c, ts, err := typeClaims(m)
	if err != nil {
		return ReasonMalformed, err
	}
	if !ts.hasExp {
		return refuse(ReasonMalformed, "no exp claim")
	}
	if c.Issuer == "" {
		return refuse(ReasonWrongIssuer, "no iss claim")
	}
	t.exp, t.nbf, t.iat, t.hasNbf, t.hasIat = ts.exp, ts.nbf, ts.iat, ts.hasNbf, ts.hasIat
	c.KeyID = t.hdr.Kid
	t.claims = c
	return ReasonNone, nil
}

// verifySignature checks sig over input with pub for alg. The caller has
// already matched alg against the issuer's allow-list.
func verifySignature(pub crypto.PublicKey, alg, input string, sig []byte) bool {
	var h crypto.Hash
	switch alg[2:] {
	case "256":
		h = crypto.SHA256
	case "384":
		h = crypto.SHA384
	case "512":
		h = crypto.SHA512
	default:
		return false
	}
	var buf [64]byte
	digest := buf[:h.Size()]
	switch h {
	case crypto.SHA256:
		d := sha256.Sum256(bytesOf(input))
		copy(digest, d[:])
	case crypto.SHA384:
		d := sha512.Sum384(bytesOf(input))
		copy(digest, d[:])
	case crypto.SHA512:
		d := sha512.Sum512(bytesOf(input))
		copy(digest, d[:])
	}
	switch alg[:2] {
	case "RS":
		k, ok := pub.(*rsa.PublicKey)
		return ok && rsa.VerifyPKCS1v15(k, h, digest, sig) == nil
	case "PS":
		k, ok := pub.(*rsa.PublicKey)
		return ok && rsa.VerifyPSS(k, h, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil
	case "ES":
		k, ok := pub.(*ecdsa.PublicKey)
		if !ok {
			return false
		}
		size := (k.Curve.Params().BitSize + 7) / 8
		want := map[string]int{"256": 32, "384": 48, "512": 66}[alg[2:]]
		if size != want || len(sig) != 2*size {
			return false
		}
		r := new(big.Int).SetBytes(sig[:size])
		s := new(big.Int).SetBytes(sig[size:])
		return ecdsa.Verify(k, digest, r, s)
	}
	return false
}

// stringOf views b as a string without copying; b must never be written
// afterwards.
func stringOf(b []byte) string {
	return unsafe.String(unsafe.SliceData(b), len(b))
}

// bytesOf views s as bytes without copying, for read-only use (hashing and
// comparison); the result must never be written or retained.
func bytesOf(s string) []byte {
	return unsafe.Slice(unsafe.StringData(s), len(s))
}
