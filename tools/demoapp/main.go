// Command demoapp is the sample application of the Portcullis demo and
// end-to-end tests: a small HTTP service that answers every request with a
// JSON description of what it received, including the identity headers the
// verifier added. It knows nothing of tokens or policies; Portcullis in front
// of it decides who gets through.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"
)

func main() {
	addr := flag.String("listen", ":8080", "address to serve on")
	name := flag.String("name", "orders-api", "service name reported in responses")
	flag.Parse()

	srv := &http.Server{
		Addr:              *addr,
		Handler:           handler(*name),
		ReadHeaderTimeout: 10 * time.Second,
	}
	fmt.Fprintf(os.Stderr, "demoapp %s listening on %s\n", *name, *addr)
	log.Fatal(srv.ListenAndServe())
}

// reply is what the app answers.
type reply struct {
	Service string            `json:"service"`
	Method  string            `json:"method"`
	Path    string            `json:"path"`
	Bytes   int64             `json:"bytes"`
	Headers map[string]string `json:"headers"`
}

func handler(name string) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		hs := map[string]string{}
		keys := make([]string, 0, len(r.Header))
		for k := range r.Header {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			lk := strings.ToLower(k)
			// Only the headers a reader of the demo cares about: what
			// Portcullis added. Never the Authorization header.
			if strings.HasPrefix(lk, "x-portcullis-") || strings.HasPrefix(lk, "x-forwarded-") || lk == "forwarded" || strings.HasPrefix(lk, "x-claim-") {
				hs[k] = strings.Join(r.Header[k], ", ")
			}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(reply{Service: name, Method: r.Method, Path: r.URL.Path, Bytes: n, Headers: hs})
	})
}
