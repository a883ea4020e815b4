package verifier

import (
	"strings"
	"testing"
)

func TestValidValueMatchesByteLoop(t *testing.T) {
	for c := 0; c < 256; c++ {
		for pos := 0; pos < 19; pos++ {
			for n := pos + 1; n <= 19; n++ {
				b := []byte(strings.Repeat("a", n))
				b[pos] = byte(c)
				if got, want := validValue(string(b)), validValueBytes(string(b)); got != want {
					t.Fatalf("validValue(%q) = %v, want %v", b, got, want)
				}
			}
		}
	}
}

var sinkBool bool

func BenchmarkValidValue(b *testing.B) {
	v := strings.Repeat("eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9", 40)
	b.Run("swar", func(b *testing.B) {
		for b.Loop() {
			sinkBool = validValue(v)
		}
	})
	b.Run("bytes", func(b *testing.B) {
		for b.Loop() {
			sinkBool = validValueBytes(v)
		}
	})
}
