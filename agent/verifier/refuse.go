package verifier

import (
	"bufio"
	"net/http"
	"net/url"
	"strconv"
)

// refusal describes an answer the verifier gives itself.
type refusal struct {
	status int
	reason Reason
}

// errorCode returns the RFC 6750 error code for a status.
func errorCode(status int) string {
	switch status {
	case http.StatusUnauthorized:
		return "invalid_token"
	case http.StatusForbidden:
		return "insufficient_scope"
	case http.StatusBadRequest:
		return "invalid_request"
	case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return "upstream_unavailable"
	}
	return "request_refused"
}

// safeReason keeps only [a-z0-9_] so a Reason can never break out of the
// quoted WWW-Authenticate parameter or the JSON body, whatever an
// Authorizer returns.
func safeReason(r Reason) string {
	for i := 0; i < len(r); i++ {
		c := r[i]
		if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '_') {
			return "invalid_reason"
		}
	}
	return string(r)
}

func refusalBody(status int, reason Reason) []byte {
	b := make([]byte, 0, 96)
	b = append(b, `{"error":"`...)
	b = append(b, errorCode(status)...)
	b = append(b, `","error_description":"`...)
	b = append(b, safeReason(reason)...)
	b = append(b, "\"}\n"...)
	return b
}

func wwwAuthenticate(status int, reason Reason) string {
	switch status {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusBadRequest:
		return `Bearer error="` + errorCode(status) + `", error_description="` + safeReason(reason) + `"`
	}
	return ""
}

// writeRefusal1 writes an HTTP/1.1 refusal to bw and flushes.
func writeRefusal1(bw *bufio.Writer, status int, reason Reason, closeConn bool) error {
	body := refusalBody(status, reason)
	bw.WriteString("HTTP/1.1 ")
	bw.WriteString(strconv.Itoa(status))
	bw.WriteByte(' ')
	bw.WriteString(http.StatusText(status))
	bw.WriteString("\r\nContent-Type: application/json\r\nCache-Control: no-store\r\n")
	if wa := wwwAuthenticate(status, reason); wa != "" {
		bw.WriteString("WWW-Authenticate: ")
		bw.WriteString(wa)
		bw.WriteString("\r\n")
	}
	if closeConn {
		bw.WriteString("Connection: close\r\n")
	}
	bw.WriteString("Content-Length: ")
	bw.WriteString(strconv.Itoa(len(body)))
	bw.WriteString("\r\n\r\n")
	bw.Write(body)
	return bw.Flush()
}

// gRPC status codes used for refusals.
const (
	grpcUnavailable     = 14
	grpcUnauthenticated = 16
	grpcPermission      = 7
	grpcInternal        = 13
)

// writeRefusal2 answers an HTTP/2 request. gRPC requests get a
// trailers-only response (HTTP 200 with grpc-status), as gRPC clients
// expect; others the same JSON as HTTP/1.1.
func writeRefusal2(w http.ResponseWriter, isGRPC bool, status int, reason Reason) {
	h := w.Header()
	if isGRPC {
		code := grpcPermission
		switch status {
		case http.StatusUnauthorized:
			code = grpcUnauthenticated
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
			code = grpcUnavailable
		case http.StatusBadRequest:
			code = grpcInternal
			if reason == ReasonMultipleTokens {
				code = grpcUnauthenticated
			}
		}
		h.Set("Content-Type", "application/grpc")
		h.Set("Grpc-Status", strconv.Itoa(code))
		// grpc-message is percent-encoded (gRPC over HTTP/2 spec).
		h.Set("Grpc-Message", url.PathEscape("portcullis: "+errorCode(status)+": "+safeReason(reason)))
		if wa := wwwAuthenticate(status, reason); wa != "" {
			h.Set("Www-Authenticate", wa)
		}
		w.WriteHeader(http.StatusOK)
		return
	}
	body := refusalBody(status, reason)
	h.Set("Content-Type", "application/json")
	h.Set("Cache-Control", "no-store")
	if wa := wwwAuthenticate(status, reason); wa != "" {
		h.Set("Www-Authenticate", wa)
	}
	h.Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	w.Write(body)
}
