package coreclient

import (
	"context"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

// request is what the API server would see of one call.
type request struct {
	Method, URL, Accept, ContentType, UserAgent, Body string
}

// recorder is an http.RoundTripper that records requests and answers each
// with 404, so that no client retries.
type recorder struct {
	mu  sync.Mutex
	got []request
}

func (r *recorder) RoundTrip(req *http.Request) (*http.Response, error) {
	var body []byte
	if req.Body != nil {
		b, err := io.ReadAll(req.Body)
		if err != nil {
			return nil, err
		}
		body = b
	}
	r.mu.Lock()
	r.got = append(r.got, request{
		Method: req.Method, URL: req.URL.String(),
		Accept: req.Header.Get("Accept"), ContentType: req.Header.Get("Content-Type"),
		UserAgent: req.Header.Get("User-Agent"), Body: string(body),
	})
	r.mu.Unlock()
	const status = `{"kind":"Status","apiVersion":"v1","status":"Failure","reason":"NotFound","code":404}`
	return &http.Response{
		StatusCode: http.StatusNotFound,
		Header:     http.Header{"Content-Type": {"application/json"}},
		Body:       io.NopCloser(strings.NewReader(status)),
		Request:    req,
	}, nil
}

func (r *recorder) take() []request {
	r.mu.Lock()
	defer r.mu.Unlock()
	got := r.got
	r.got = nil
	return got
}

// TestSameRequestsAsClientset checks that this package's client asks the
// API server exactly what client-go's typed core/v1 client and its
// informers ask: it stands in for them.
func TestSameRequestsAsClientset(t *testing.T) {
	for _, contentType := range []string{"", "application/json", "application/vnd.kubernetes.protobuf"} {
		t.Run("content type "+contentType, func(t *testing.T) {
			rec := &recorder{}
			cfg := &rest.Config{Host: "https://apiserver.test:6443", Transport: rec}
			cfg.ContentType = contentType
			core, err := NewForConfig(cfg)
			if err != nil {
				t.Fatal(err)
			}
			cs, err := kubernetes.NewForConfig(cfg)
			if err != nil {
				t.Fatal(err)
			}
			ctx := context.Background()
			opts := metav1.ListOptions{
				ResourceVersion: "42", ResourceVersionMatch: metav1.ResourceVersionMatchNotOlderThan,
				TimeoutSeconds: ptr.To[int64](300), AllowWatchBookmarks: true,
				SendInitialEvents: ptr.To(true), Limit: 500, LabelSelector: "app=x",
			}
			onNode := func(o *metav1.ListOptions) { o.FieldSelector = "spec.nodeName=node-a" }
			selected := opts
			onNode(&selected)
			podList := func() runtime.Object { return &corev1.PodList{} }
			saList := func() runtime.Object { return &corev1.ServiceAccountList{} }
			nsList := func() runtime.Object { return &corev1.NamespaceList{} }
			ev := &corev1.Event{
				ObjectMeta: metav1.ObjectMeta{Name: "orders.1", Namespace: "shop", ResourceVersion: "7"},
				Reason:     "InvalidPolicy", Message: "issuer shop/entra does not exist", Type: corev1.EventTypeWarning,
			}
			patch := []byte(`{"count":3}`)
			sink := EventSink{Client: core}
			typedSink := &typedcorev1.EventSinkImpl{Interface: cs.CoreV1().Events("")}

			for _, tc := range []struct {
				name        string
				ours, typed func()
			}{
				{
					name: "list pods on a node",
					ours: func() {
						_, _ = cache.ToListerWatcherWithContext(ListWatch(core, "pods", podList, onNode)).ListWithContext(ctx, opts)
					},
					typed: func() { _, _ = cs.CoreV1().Pods("").List(ctx, selected) },
				},
				{
					name: "watch pods on a node",
					ours: func() {
						_, _ = cache.ToListerWatcherWithContext(ListWatch(core, "pods", podList, onNode)).WatchWithContext(ctx, opts)
					},
					typed: func() { _, _ = cs.CoreV1().Pods("").Watch(ctx, selected) },
				},
				{
					name: "list service accounts",
					ours: func() {
						_, _ = cache.ToListerWatcherWithContext(ListWatch(core, "serviceaccounts", saList, nil)).ListWithContext(ctx, opts)
					},
					typed: func() { _, _ = cs.CoreV1().ServiceAccounts("").List(ctx, opts) },
				},
				{
					name: "watch namespaces",
					ours: func() {
						_, _ = cache.ToListerWatcherWithContext(ListWatch(core, "namespaces", nsList, nil)).WatchWithContext(ctx, opts)
					},
					typed: func() { _, _ = cs.CoreV1().Namespaces().Watch(ctx, opts) },
				},
				{
					name:  "create event",
					ours:  func() { _, _ = sink.Create(ev) },
					typed: func() { _, _ = typedSink.Create(ev) },
				},
				{
					name:  "update event",
					ours:  func() { _, _ = sink.Update(ev) },
					typed: func() { _, _ = typedSink.Update(ev) },
				},
				{
					name:  "patch event",
					ours:  func() { _, _ = sink.Patch(ev, patch) },
					typed: func() { _, _ = typedSink.Patch(ev, patch) },
				},
			} {
				t.Run(tc.name, func(t *testing.T) {
					rec.take()
					tc.typed()
					want := rec.take()
					tc.ours()
					got := rec.take()
					if len(want) != 1 {
						t.Fatalf("client-go made %d requests, want 1: %+v", len(want), want)
					}
					if diff := cmp.Diff(want, got); diff != "" {
						t.Errorf("requests differ from client-go's (-client-go +ours):\n%s", diff)
					}
				})
			}
		})
	}
}
