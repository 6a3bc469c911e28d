package spm

import (
	"errors"
	"testing"

	"github.com/lvwatch/lvwatch/internal/lvm"
)

// A VG of 100 extents of 1 MiB on one PV, with an LV for each case.
func testVG() *lvm.VG {
	lv := func(name, segType string, status ...string) lvm.LV {
		return lvm.LV{Name: name, Status: status, Segments: []lvm.Segment{{ExtentCount: 10, Type: segType, StripeCount: 1,
			Stripes: []lvm.Area{{PV: "pv0"}}}}}
	}
	vg := &lvm.VG{Name: "vg", ExtentSize: 2048, PVs: []lvm.PV{{Name: "pv0", Device: "/dev/x", Status: []string{"ALLOCATABLE"}, PECount: 100}}}
	vg.LVs = append(vg.LVs, lv("vol", "striped", "VISIBLE"), lv("hidden", "striped"), lv("pool", "thin-pool", "VISIBLE"))
	for _, name := range specialLVs {
		vg.LVs = append(vg.LVs, lv(name, "striped", "VISIBLE"))
	}
	return vg
}

func TestTarget(t *testing.T) {
	vg := testVG()
	sp := vgSpace(vg, 8<<20)
	if sp.total != 100 || sp.free != 100-10*uint64(len(vg.LVs)) || sp.reserve != 8 {
		t.Fatalf("space %+v", sp)
	}
	l := limits{maxLVBytes: 64 << 20}
	if _, want, err := l.target(vg, sp, "vol", 33); err != nil || want != 33 {
		t.Errorf("vol to 33 MiB: %d extents, %v", want, err)
	}
	refused := []struct {
		lv      string
		sizeMiB uint64
	}{{"nope", 20}, {"hidden", 20}, {"pool", 20}, {"vol", 65}}
	for _, name := range specialLVs {
		refused = append(refused, struct {
			lv      string
			sizeMiB uint64
		}{name, 20})
	}
	for _, tc := range refused {
		if _, _, err := l.target(vg, sp, tc.lv, tc.sizeMiB); !errors.Is(err, errRefused) {
			t.Errorf("%s to %d MiB: %v, want a refusal", tc.lv, tc.sizeMiB, err)
		}
	}
}
