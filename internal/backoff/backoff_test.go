package backoff

import (
	"testing"
	"time"
)

// Waits double from the minimum to the maximum; a reset starts again.
func TestBackoff(t *testing.T) {
	b := New(10*time.Millisecond, time.Second)
	want := []time.Duration{10, 20, 40, 80, 160, 320, 640, 1000, 1000}
	for i, w := range want {
		if got := b.Next(); got != w*time.Millisecond || b.Current() != got {
			t.Fatalf("wait %d: %v (current %v), want %v ms", i, got, b.Current(), w)
		}
	}
	b.Reset()
	if b.Current() != 0 || b.Next() != 10*time.Millisecond {
		t.Error("a reset keeps the backoff")
	}
}
