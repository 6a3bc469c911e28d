package lvm_test

import (
	"testing"

	"github.com/lvwatch/lvwatch/internal/lvm"
)

// TestCacheRevalidates: a VG read through the cache is served from it until
// lvm commits a change, and read again then.
func TestCacheRevalidates(t *testing.T) {
	f := newFixture(t, "lvwatch-t-cache", 3)
	c := lvm.NewCache()
	first, cached, err := c.ReadVG(t.Context(), f.vg, f.env.Paths())
	if err != nil || cached {
		t.Fatalf("first read: cached %v, %v", cached, err)
	}
	again, cached, err := c.ReadVG(t.Context(), f.vg, nil)
	if err != nil || !cached || again != first {
		t.Fatalf("second read, metadata unchanged: cached %v, same %v, %v", cached, again == first, err)
	}
	f.extend(t)
	after, cached, err := c.ReadVG(t.Context(), f.vg, f.env.Paths())
	if err != nil || cached || after.Seqno != first.Seqno+1 {
		t.Fatalf("after an lvextend: cached %v, seqno %d (was %d), %v", cached, after.Seqno, first.Seqno, err)
	}
	compareWithLVM(t, f.env, after)
	// Other devices than those it was read from: read again.
	if _, cached, err := c.ReadVG(t.Context(), f.vg, f.env.Paths()[:2]); err != nil || cached {
		t.Errorf("read from other devices: cached %v, %v", cached, err)
	}
}
