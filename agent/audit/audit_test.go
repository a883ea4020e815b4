package audit

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

var update = flag.Bool("update", false, "rewrite golden files")

func sampleRecords() []Record {
	t0 := time.Date(2026, 11, 22, 14, 3, 4, 123456789, time.UTC)
	return []Record{
		{
			Time: t0, Decision: Allow, Policy: "shop/orders-readers", Rule: "0", Mode: Enforce,
			Source: "spiffe://cluster.local/ns/shop/sa/frontend", SourceAddr: "10.0.0.7:51234",
			Workload: "shop/orders-api-7d9f", Port: 8080, Protocol: "http/1.1",
			Method: "GET", Path: "/orders/42",
			Issuer: "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0", Tenant: "72f988bf-86f1-41af-91ab-2d7cd011db47",
			ObjectID: "9f2c1c1e-0000-4000-8000-000000000001", Subject: "AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ", ClientID: "0e1f2a3b-0000-4000-8000-000000000002",
		},
		{
			Time: t0.Add(time.Millisecond), Decision: Deny, Reason: "expired", Mode: Enforce,
			Source: "anonymous", SourceAddr: "[fd00::9]:40000", Workload: "shop/orders-api-7d9f", Port: 8080,
			Protocol: "h2", Method: "POST", Path: "/orders", Status: 401,
		},
		{
			Time: t0.Add(2 * time.Millisecond), Decision: Deny, Reason: "no_matching_rule", Policy: "shop/orders-writers", Mode: AuditOnly,
			Source: "spiffe://cluster.local/ns/shop/sa/attacker", Workload: "shop/orders-api-7d9f", Port: 50051,
			Protocol: "grpc", Method: "POST", Path: "/shop.Orders/Create\"<x>\n\xff",
			Issuer: "https://sts.windows.net/t/", Tenant: "t", Subject: "s", ClientID: "c",
		},
		{
			Time: t0.Add(3 * time.Millisecond), Decision: Allow, Mode: Enforce, Source: "anonymous",
			Workload: "db/postgres-0", Port: 5432, Protocol: "tcp",
		},
	}
}

func TestRecordGolden(t *testing.T) {
	var buf []byte
	for _, r := range sampleRecords() {
		buf = r.AppendJSON(buf)
	}
	golden := filepath.Join("testdata", "records.golden")
	if *update {
		if err := os.WriteFile(golden, buf, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("read golden (run with -update to create): %v", err)
	}
	if diff := cmp.Diff(string(want), string(buf)); diff != "" {
		t.Errorf("records differ from %s (-want +got):\n%s", golden, diff)
	}
	// Every line must be valid JSON that encoding/json reads back.
	for i, line := range bytes.Split(bytes.TrimSpace(buf), []byte("\n")) {
		var m map[string]any
		if err := json.Unmarshal(line, &m); err != nil {
			t.Errorf("line %d is not JSON: %v: %s", i, err, line)
		}
	}
}

func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "plain", "quote\" back\\slash", "ctl\x00\x01\x1f\t\r\n", "<&>", "é漢字", "bad\xff\xfeutf8", "\u2028\u2029"} {
		got := appendString(nil, s)
		want, _ := json.Marshal(s)
		if string(got) != string(want) {
			t.Errorf("appendString(%q) = %s, want %s", s, got, want)
		}
	}
}

func FuzzAppendString(f *testing.F) {
	f.Add("a\"b\\c\x00\xff")
	f.Fuzz(func(t *testing.T, s string) {
		var back string
		if err := json.Unmarshal(appendString(nil, s), &back); err != nil {
			t.Fatalf("appendString(%q) is not a JSON string: %v", s, err)
		}
	})
}

// blockingWriter blocks every Write until release is closed and signals
// entered on the first one.
type blockingWriter struct {
	entered chan struct{}
	release chan struct{}
	once    sync.Once
	mu      sync.Mutex
	buf     bytes.Buffer
}

func (w *blockingWriter) Write(p []byte) (int, error) {
	w.once.Do(func() { close(w.entered) })
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func TestDropPolicyWhenFull(t *testing.T) {
	w := &blockingWriter{entered: make(chan struct{}), release: make(chan struct{})}
	l := New(Config{Writer: w, BufferSize: 2, DenyWait: 20 * time.Millisecond})
	released := false
	release := func() {
		if !released {
			released = true
			close(w.release)
		}
	}
	t.Cleanup(func() {
		release()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := l.Close(ctx); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	allow := &Record{Decision: Allow, Path: "/a"}
	deny := &Record{Decision: Deny, Path: "/d"}

	l.Log(allow) // taken by the writer, which then blocks
	select {
	case <-w.entered:
	case <-time.After(5 * time.Second):
		t.Fatal("writer never called")
	}
	l.Log(allow) // buffer: 1
	l.Log(deny)  // buffer: 2 (full)
	l.Log(allow) // dropped at once
	start := time.Now()
	l.Log(deny) // blocks DenyWait, then dropped
	if waited := time.Since(start); waited < 20*time.Millisecond {
		t.Errorf("deny on full buffer returned after %v, want it to wait ≥ 20ms", waited)
	}
	got := l.Stats()
	if got.DroppedAllows != 1 || got.DroppedDenies != 1 {
		t.Errorf("dropped allows/denies = %d/%d, want 1/1", got.DroppedAllows, got.DroppedDenies)
	}

	// A deny that waits while the writer catches up is kept.
	l2done := make(chan struct{})
	l.cfg.DenyWait = time.Minute // only this goroutine logs from here on
	go func() {
		defer close(l2done)
		l.Log(&Record{Decision: Deny, Path: "/kept"})
	}()
	release()
	select {
	case <-l2done:
	case <-time.After(10 * time.Second):
		t.Fatal("deny still blocked after the writer was released")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.Close(ctx); err != nil {
		t.Fatalf("Close: %v", err)
	}
	got = l.Stats()
	if got.Written != 4 || got.DroppedDenies != 1 {
		t.Errorf("written=%d droppedDenies=%d, want 4 and 1", got.Written, got.DroppedDenies)
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if !bytes.Contains(w.buf.Bytes(), []byte(`"path":"/kept"`)) {
		t.Errorf("output lacks the deny logged while full:\n%s", w.buf.String())
	}
}

func TestAllowSampling(t *testing.T) {
	var buf syncBuffer
	l := New(Config{Writer: &buf, AllowSampling: 10})
	for i := 0; i < 100; i++ {
		l.Log(&Record{Decision: Allow})
	}
	for i := 0; i < 5; i++ {
		l.Log(&Record{Decision: Deny})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	st := l.Stats()
	if st.Written != 15 || st.SampledOut != 90 {
		t.Errorf("written=%d sampledOut=%d, want 15 and 90", st.Written, st.SampledOut)
	}

	// Negative: no allow at all, every deny.
	l = New(Config{Writer: &buf, AllowSampling: -1})
	for i := 0; i < 10; i++ {
		l.Log(&Record{Decision: Allow})
		l.Log(&Record{Decision: Deny})
	}
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if st := l.Stats(); st.Written != 10 || st.SampledOut != 10 {
		t.Errorf("AllowSampling -1: written=%d sampledOut=%d, want 10 and 10", st.Written, st.SampledOut)
	}
}

func TestSubscribers(t *testing.T) {
	l := New(Config{SubscriberBuffer: 3})
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		l.Close(ctx)
	})
	fast, err := l.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	slow, err := l.Subscribe()
	if err != nil {
		t.Fatal(err)
	}
	const n = 10
	for i := 0; i < n; i++ {
		p := "/" + string(rune('a'+i))
		// The fast subscriber reads each record before the next is logged,
		// so its queue of 3 never overflows; the slow one never reads.
		l.Log(&Record{Decision: Deny, Path: p})
		select {
		case r := <-fast.C():
			if r.Path != p {
				t.Fatalf("fast subscriber got path %q, want %q", r.Path, p)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("fast subscriber did not receive record %d", i)
		}
	}
	// The writer may offer the last record to the slow subscriber after the
	// fast one got it; Close waits for the writer.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := l.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if d := slow.Dropped(); d != n-3 {
		t.Errorf("slow subscriber dropped %d, want %d", d, n-3)
	}
	if st := l.Stats(); st.SubscriberDrops != n-3 {
		t.Errorf("Stats().SubscriberDrops = %d, want %d", st.SubscriberDrops, n-3)
	}
	slow.Close()
	slow.Close() // idempotent
	if _, ok := <-slow.C(); !ok {
		t.Error("slow subscriber channel closed before its queued records were read")
	}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// BenchmarkAppendJSON is the per-record encoding cost of the writer.
//
//	go test -run '^$' -bench AppendJSON ./agent/audit/
func BenchmarkAppendJSON(b *testing.B) {
	rec := sampleRecords()[0]
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		buf = rec.AppendJSON(buf[:0])
	}
}
