package spm

import (
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/lvm"
	"github.com/lvwatch/lvwatch/internal/testutil"
)

// A PV not found is logged at warn level once per metadata version, with its
// uuid and the device the metadata names.
func TestWarnMissingPV(t *testing.T) {
	var logs testutil.LogBuffer
	d := &domain{log: zerolog.New(&logs)}
	vg := &lvm.VG{ID: "vg-id", Seqno: 7, PVs: []lvm.PV{
		{ID: "found-id", Device: "/dev/sda"},
		{ID: "lost-id", DeviceHint: "/dev/mapper/elsewhere"},
	}, Warnings: []string{"pv1: device not found"}}
	d.warnMissing(vg)
	d.warnMissing(vg)
	if n := len(logs.Lines(`"pv_uuid":"lost-id","device_hint":"/dev/mapper/elsewhere"`)); n != 1 {
		t.Errorf("%d lines for the lost PV, want 1:\n%s", n, logs.String())
	}
	if n := len(logs.Lines(`"level":"warn"`)); n != 2 {
		t.Errorf("%d warnings, want the PV and the read's warning:\n%s", n, logs.String())
	}
	next := *vg
	next.Seqno++
	d.warnMissing(&next)
	if n := len(logs.Lines("lost-id")); n != 2 {
		t.Errorf("a new metadata version: %d lines for the lost PV, want 2", n)
	}
}

// Failed reads back off from 10 ms to a second; one that works resets it.
func TestNextRetry(t *testing.T) {
	var got []time.Duration
	var d time.Duration
	for range 9 {
		d = nextRetry(d, true)
		got = append(got, d)
	}
	want := []time.Duration{10, 20, 40, 80, 160, 320, 640, 1000, 1000}
	for i := range want {
		if got[i] != want[i]*time.Millisecond {
			t.Fatalf("retries %v, want %v ms", got, want)
		}
	}
	if nextRetry(d, false) != 0 {
		t.Error("a read that worked keeps the backoff")
	}
}
