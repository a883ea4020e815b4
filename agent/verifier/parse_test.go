package verifier

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// FuzzParseRequest checks the fast request parser against http.ReadRequest
// on every header block headProblem accepts: same request, or the fast
// parser declines (and ReadRequest decides).
func FuzzParseRequest(f *testing.F) {
	f.Add([]byte("GET /a?b=c HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nx-lower: v \r\n\r\n"))
	f.Add([]byte("POST /p HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc"))
	f.Add([]byte("PUT /p HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 2\r\nA: 1\r\na: 2\r\n\r\nzz"))
	f.Add([]byte("GET http://h/p HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("GET /%zz HTTP/1.1\r\nHost: x\r\nPragma: no-cache\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost:\r\nX:\r\nY: \t\r\nZ: a\tb\xff\r\nx_y-z: 1\r\nCONTENT-length: 007\r\n\r\n1234567"))
	f.Add([]byte("POST /x HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\nContent-Length: +5\r\n\r\n12345"))
	f.Add([]byte("POST /x HTTP/1.1\r\nHost: h:80\r\nContent-Length:  0 \r\nExpect: 100-continue\r\n\r\n"))
	f.Add([]byte("GET //a/./b~_-.?q=%zz&x=/?y HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("GET /a%2Fb?#f HTTP/1.1\r\nHost: x\r\n\r\n"))
	// One scratch for every input, as a connection reuses it for every
	// request: what an earlier input left in it must not show.
	var sc reqScratch
	f.Fuzz(func(t *testing.T, in []byte) {
		i := bytes.Index(in, crlfcrlf)
		if i < 0 {
			return
		}
		head := in[:i+4]
		if headProblem(head, 100).status != 0 {
			return
		}
		fast, ok := parseFast(head, bufio.NewReader(bytes.NewReader(in[i+4:])), &sc)
		if !ok {
			return
		}
		std, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(in)))
		if err != nil {
			t.Fatalf("fast parser accepted what ReadRequest refuses (%v): %q", err, head)
		}
		// ReadRequest invents Cache-Control for Pragma: no-cache; the
		// verifier forwards what the client sent.
		if _, ok := fast.Header["Cache-Control"]; !ok {
			delete(std.Header, "Cache-Control")
		}
		type view struct {
			Method, RequestURI, URL, Proto, Host string
			Path, RawPath, RawQuery              string
			ForceQuery                           bool
			ContentLength                        int64
			Close                                bool
			Header                               http.Header
			Body                                 string
		}
		v := func(r *http.Request) view {
			b, _ := io.ReadAll(r.Body)
			return view{r.Method, r.RequestURI, r.URL.String(), r.Proto, r.Host,
				r.URL.Path, r.URL.RawPath, r.URL.RawQuery, r.URL.ForceQuery,
				r.ContentLength, r.Close, r.Header, string(b)}
		}
		if diff := cmp.Diff(v(std), v(fast)); diff != "" {
			t.Errorf("parse of %q (-ReadRequest +fast):\n%s", in, diff)
		}
	})
}

func TestParseRequestFallsBack(t *testing.T) {
	for _, raw := range []string{
		"GET http://h/p HTTP/1.1\r\nHost: x\r\n\r\n",                                // absolute-form
		"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n",                                     // asterisk-form
		"GET / HTTP/1.0\r\n\r\n",                                                    // HTTP/1.0 keep-alive rules
		"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", // chunked
	} {
		if _, ok := parseFast([]byte(raw[:bytes.Index([]byte(raw), crlfcrlf)+4]), bufio.NewReader(bytes.NewReader(nil)), nil); ok {
			t.Errorf("parseFast took %q, want the ReadRequest fallback", raw)
		}
		req, err := parseRequest(bufio.NewReader(bytes.NewReader([]byte(raw))), bytes.Index([]byte(raw), crlfcrlf)+4, nil)
		if err != nil || req.Method == "" {
			t.Errorf("parseRequest(%q) = %v, %v; want the fallback's request", raw, req, err)
		}
	}
}

// FuzzParseResponse checks the fast response parser against
// http.ReadResponse, for GET and HEAD.
func FuzzParseResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello"), false)
	f.Add([]byte("HTTP/1.1 204 No Content\r\nContent-Length: 9\r\n\r\n"), false)
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\n"), true)
	f.Add([]byte("HTTP/1.1 404\r\nx-a: 1\r\nX-A: 2\r\nContent-Length: 0\r\n\r\n"), false)
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), false)
	var sc respScratch // reused by every input, as by a connection
	f.Fuzz(func(t *testing.T, in []byte, head bool) {
		i := bytes.Index(in, crlfcrlf)
		if i < 0 || headProblem(in[:i+4], 1<<20).status != 0 {
			return
		}
		req := &http.Request{Method: "GET"}
		if head {
			req.Method = "HEAD"
		}
		fast, ok := parseResponseFast(in[:i+4], bufio.NewReader(bytes.NewReader(in[i+4:])), req, &sc)
		if !ok {
			return
		}
		std, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(in)), req)
		if err != nil {
			t.Fatalf("fast parser accepted what ReadResponse refuses (%v): %q", err, in[:i+4])
		}
		type view struct {
			Status        string
			StatusCode    int
			Proto         string
			ContentLength int64
			Close         bool
			Header        http.Header
			Body          string
		}
		v := func(r *http.Response) view {
			b, _ := io.ReadAll(r.Body)
			return view{r.Status, r.StatusCode, r.Proto, r.ContentLength, r.Close, r.Header, string(b)}
		}
		if diff := cmp.Diff(v(std), v(fast)); diff != "" {
			t.Errorf("parse of %q (-ReadResponse +fast):\n%s", in, diff)
		}
	})
}
