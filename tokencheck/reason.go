package tokencheck

// Reason says why a token was refused. Values are stable, short snake_case
// strings used in RFC 6750 error_description, audit records and metric labels,
// so the set is bounded; never build one from token contents.
type Reason string

const (
	// ReasonNone: the token was accepted.
	ReasonNone Reason = ""
	// ReasonMissingToken: no bearer token was presented where one is required.
	ReasonMissingToken Reason = "missing_token"
	// ReasonMultipleTokens: more than one Authorization header or credential.
	ReasonMultipleTokens Reason = "multiple_tokens"
	// ReasonMalformed: not a compact JWS, bad base64url, bad JSON, missing kid, …
	ReasonMalformed Reason = "malformed"
	// ReasonTokenTooLarge: over the configured size limit.
	ReasonTokenTooLarge Reason = "token_too_large"
	// ReasonAlgNotAllowed: the header's alg is not on the allow-list (none, HS*, …).
	ReasonAlgNotAllowed Reason = "alg_not_allowed"
	// ReasonCritUnsupported: the header lists a crit extension we do not understand.
	ReasonCritUnsupported Reason = "crit_unsupported"
	// ReasonEmbeddedKey: the header carries jwk, jku, x5u or x5c.
	ReasonEmbeddedKey Reason = "embedded_key"
	// ReasonUnknownKID: the kid is not in the issuer's key set, even after a refresh.
	ReasonUnknownKID Reason = "unknown_kid"
	// ReasonBadSignature: the signature does not verify with the named key.
	ReasonBadSignature Reason = "bad_signature"
	// ReasonExpired: exp is in the past (beyond the clock skew).
	ReasonExpired Reason = "expired"
	// ReasonNotYetValid: nbf (or iat) is in the future (beyond the clock skew).
	ReasonNotYetValid Reason = "not_yet_valid"
	// ReasonWrongIssuer: iss matches no configured issuer, or disagrees with tid.
	ReasonWrongIssuer Reason = "wrong_issuer"
	// ReasonWrongAudience: aud names none of the configured audiences.
	ReasonWrongAudience Reason = "wrong_audience"
	// ReasonTenantNotAllowed: tid is not the issuer's tenant nor in allowedTenants.
	ReasonTenantNotAllowed Reason = "tenant_not_allowed"
	// ReasonVersionNotAccepted: ver is not in acceptedVersions.
	ReasonVersionNotAccepted Reason = "version_not_accepted"
	// ReasonGraphToken: the header has a nonce: a Microsoft Graph token, not for us.
	ReasonGraphToken Reason = "graph_token"
	// ReasonJWKSUnavailable: no usable key set (never fetched, or stale past the bound).
	ReasonJWKSUnavailable Reason = "jwks_unavailable"
	// ReasonGroupOverage: a policy needs groups and the token has the overage form.
	ReasonGroupOverage Reason = "group_overage"
	// ReasonNotAccessToken: a genuine Azure AD token that is not an access
	// token (an ID token: no azp/appid), whose aud may still name our client ID.
	ReasonNotAccessToken Reason = "not_access_token"
)
