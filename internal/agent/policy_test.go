package agent

import (
	"math"
	"testing"
)

func TestPolicy(t *testing.T) {
	p := Policy{Chunk: 1 << 30, Trigger: 512 << 20}.withDefaults()
	if p.Overhead != DefaultOverhead {
		t.Errorf("overhead %g, want the default", p.Overhead)
	}
	if thr, ok := p.threshold(2 << 30); !ok || thr != 1536<<20 {
		t.Errorf("threshold of 2 GiB: %d, %v", thr, ok)
	}
	if _, ok := p.threshold(512 << 20); ok {
		t.Error("an LV no bigger than the trigger is armed instead of extended at once")
	}
	if got := p.next(2<<30, 10<<30); got != 3<<30 {
		t.Errorf("next of 2 GiB: %d", got)
	}
	if got := p.next(9<<30+1, 10<<30); got != 10<<30 {
		t.Errorf("next near the maximum: %d, want the maximum", got)
	}
	if got := p.maxSize(1 << 30); got != 1127<<20 {
		t.Errorf("max of a 1 GiB image: %d MiB, want 1127 (1.1×, rounded up to a MiB)", got>>20)
	}
	if got := p.maxSize(math.MaxUint64 / 2); got%(1<<20) != 0 || got < math.MaxUint64/2 {
		t.Errorf("max of a huge image: %d", got)
	}
	for _, bad := range []Policy{{Chunk: 4096, Trigger: 1 << 20, Overhead: 1.1}, {Chunk: 1 << 30, Trigger: 1 << 20, Overhead: 0.5}} {
		if bad.validate() == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

func TestLVOfDMName(t *testing.T) {
	const vg = "3f8e9c3a-5b4e-4a43-9d6e-1f2a3b4c5d6e"
	prefix := "3f8e9c3a--5b4e--4a43--9d6e--1f2a3b4c5d6e-"
	for name, want := range map[string]string{
		prefix + "a1b2c3d4--0000--4000--8000--000000000001": "a1b2c3d4-0000-4000-8000-000000000001",
		prefix + "inbox":   "inbox",
		prefix + "lv--x":   "lv-x",
		prefix + "lv-real": "", // a layer under an LV
		prefix:             "",
		"othervg-lv":       "",
		"3f8e9c3a-5b4e-lv": "",
	} {
		got, ok := lvOfDMName(vg, name)
		if ok != (want != "") || got != want {
			t.Errorf("%q: %q, %v; want %q", name, got, ok, want)
		}
	}
}
