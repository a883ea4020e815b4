package tokencheck

import "fmt"

// Error is the error returned with every refusal. Its message may name the
// iss, aud, kid, alg and times involved (safe to log) but never contains
// the token or other claim values. errors.Is(err, ErrExpired) and friends
// match on the Reason.
type Error struct {
	// Reason is the typed refusal reason, also returned by Validate.
	Reason Reason
	// Detail explains the refusal for logs; empty in the sentinels.
	Detail string
}

func (e *Error) Error() string {
	if e.Detail == "" {
		return "token refused: " + string(e.Reason)
	}
	return "token refused: " + string(e.Reason) + ": " + e.Detail
}

// Is reports whether target is an *Error with the same Reason, so that the
// sentinels below match any refusal of their kind.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Reason == e.Reason
}

func refuse(r Reason, format string, args ...any) (Reason, error) {
	return r, &Error{Reason: r, Detail: fmt.Sprintf(format, args...)}
}

// Sentinels for errors.Is, one per Reason that Validate returns.
var (
	ErrMissingToken       = &Error{Reason: ReasonMissingToken}
	ErrMalformed          = &Error{Reason: ReasonMalformed}
	ErrTokenTooLarge      = &Error{Reason: ReasonTokenTooLarge}
	ErrAlgNotAllowed      = &Error{Reason: ReasonAlgNotAllowed}
	ErrCritUnsupported    = &Error{Reason: ReasonCritUnsupported}
	ErrEmbeddedKey        = &Error{Reason: ReasonEmbeddedKey}
	ErrUnknownKID         = &Error{Reason: ReasonUnknownKID}
	ErrBadSignature       = &Error{Reason: ReasonBadSignature}
	ErrExpired            = &Error{Reason: ReasonExpired}
	ErrNotYetValid        = &Error{Reason: ReasonNotYetValid}
	ErrWrongIssuer        = &Error{Reason: ReasonWrongIssuer}
	ErrWrongAudience      = &Error{Reason: ReasonWrongAudience}
	ErrTenantNotAllowed   = &Error{Reason: ReasonTenantNotAllowed}
	ErrVersionNotAccepted = &Error{Reason: ReasonVersionNotAccepted}
	ErrGraphToken         = &Error{Reason: ReasonGraphToken}
	ErrJWKSUnavailable    = &Error{Reason: ReasonJWKSUnavailable}
	ErrNotAccessToken     = &Error{Reason: ReasonNotAccessToken}
)
