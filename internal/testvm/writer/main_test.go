package main

import (
	"slices"
	"strings"
	"testing"
)

func TestParseParams(t *testing.T) {
	seed := strings.Repeat("ab", 32)
	p, err := parseParams("console=ttyS0 quiet testvm.bytes=2097152 testvm.offsets=0,67108864 testvm.seed=" + seed + "\n")
	if err != nil {
		t.Fatal(err)
	}
	if p.bytes != 2<<20 || !slices.Equal(p.offsets, []int64{0, 64 << 20}) || p.seed[31] != 0xab || !slices.Equal(p.modules, defaultModules) {
		t.Errorf("got %+v", p)
	}
	p, err = parseParams("testvm.modules=virtio_mmio,virtio_blk testvm.bytes=1048576 testvm.offsets=0 testvm.seed=" + seed)
	if err != nil || !slices.Equal(p.modules, []string{"virtio_mmio", "virtio_blk"}) {
		t.Errorf("modules: got %q, %v", p.modules, err)
	}
	for _, bad := range []string{
		"testvm.offsets=0 testvm.seed=" + seed,                                          // no bytes
		"testvm.bytes=0 testvm.offsets=0 testvm.seed=" + seed,                           // nothing to write
		"testvm.bytes=1000 testvm.offsets=0 testvm.seed=" + seed,                        // not whole chunks
		"testvm.bytes=1048576 testvm.offsets=0,-1048576 testvm.seed=" + seed,            // negative
		"testvm.bytes=1048576 testvm.offsets=0 testvm.seed=abcd",                        // short seed
		"testvm.bytes=1048576 testvm.offsets= testvm.seed=" + seed,                      // empty offset
		"testvm.bytes=1048576 testvm.offsets=0 testvm.seed=" + seed[:63] + "x",          // not hex
		"testvm.bytes=1048576 testvm.offsets=0 testvm.modules=-v testvm.seed=" + seed,   // an option
		"testvm.bytes=1048576 testvm.offsets=0 testvm.modules=a,,b testvm.seed=" + seed, // empty name
	} {
		if _, err := parseParams(bad); err == nil {
			t.Errorf("parseParams(%q): no error", bad)
		}
	}
}

func FuzzParseParams(f *testing.F) {
	f.Add("testvm.bytes=1048576 testvm.offsets=0,1048576 testvm.seed=" + strings.Repeat("00", 32))
	f.Fuzz(func(t *testing.T, cmdline string) {
		p, err := parseParams(cmdline)
		if err != nil {
			return
		}
		if p.bytes <= 0 || p.bytes%chunk != 0 || len(p.offsets) == 0 || len(p.modules) == 0 {
			t.Fatalf("accepted %+v", p)
		}
		for _, m := range p.modules {
			if !validModule(m) {
				t.Fatalf("accepted module %q", m)
			}
		}
		for _, off := range p.offsets {
			if off < 0 || off%chunk != 0 {
				t.Fatalf("accepted offset %d", off)
			}
		}
	})
}
