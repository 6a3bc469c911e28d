package spm

import (
	"testing"

	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/lvm"
)

// A PV not found is logged at warn level once per metadata version, with its
// uuid and the device the metadata names.
func TestWarnMissingPV(t *testing.T) {
	var logs logBuffer
	d := &domain{log: zerolog.New(&logs)}
	vg := &lvm.VG{ID: "vg-id", Seqno: 7, PVs: []lvm.PV{
		{ID: "found-id", Device: "/dev/sda"},
		{ID: "lost-id", DeviceHint: "/dev/mapper/elsewhere"},
	}, Warnings: []string{"pv1: device not found"}}
	d.warnMissing(vg)
	d.warnMissing(vg)
	if n := len(logs.lines(`"pv_uuid":"lost-id","device_hint":"/dev/mapper/elsewhere"`)); n != 1 {
		t.Errorf("%d lines for the lost PV, want 1:\n%s", n, logs.buf.String())
	}
	if n := len(logs.lines(`"level":"warn"`)); n != 2 {
		t.Errorf("%d warnings, want the PV and the read's warning:\n%s", n, logs.buf.String())
	}
	next := *vg
	next.Seqno++
	d.warnMissing(&next)
	if n := len(logs.lines("lost-id")); n != 2 {
		t.Errorf("a new metadata version: %d lines for the lost PV, want 2", n)
	}
}
