package spm

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/lvm"
	"github.com/lvwatch/lvwatch/internal/mailbox"
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

// While the VG cannot be read, new requests wake the worker but are only queued:
// no read runs before the last one's end plus the backoff.
func TestReadErrorHoldsRequests(t *testing.T) {
	d := newDomain(DomainConfig{VG: "lvw-no-such-vg", Devices: []string{filepath.Join(t.TempDir(), "no-such-pv")}, SpacePoll: time.Millisecond}, "lvm", zerolog.Nop())
	d.enqueue(context.Background(), mailbox.Request{HostID: 1}, &mailbox.Reply{})
	if wait := d.round(); d.reads != 1 || !d.readErr || len(d.pending) != 1 || wait <= 0 {
		t.Fatalf("the first round: %d reads, read error %v, %d pending, next look in %v", d.reads, d.readErr, len(d.pending), wait)
	}
	d.retryAt = time.Now().Add(time.Hour) // a backoff that cannot end during the test
	for i := range 5 {
		d.enqueue(context.Background(), mailbox.Request{HostID: 2, Slot: i}, &mailbox.Reply{})
		if wait := d.round(); wait < time.Minute {
			t.Fatalf("a request during the backoff: next look in %v, not at its end", wait)
		}
	}
	if d.reads != 1 || len(d.pending) != 6 {
		t.Fatalf("during the backoff: %d reads (want 1), %d pending (want 6)", d.reads, len(d.pending))
	}
	if n := len(d.status().WaitingOnSpace); n != 6 {
		t.Errorf("status: %d requests waiting, want 6", n)
	}
	d.retryAt = time.Now()
	d.round()
	if d.reads != 2 || len(d.pending) != 6 || d.retry.Current() != 2*minRetry {
		t.Fatalf("after the backoff: %d reads (want 2), %d pending, next retry %v (want %v)", d.reads, len(d.pending), d.retry, 2*minRetry)
	}
}

// PVs still missing are searched for again only when the set missing changes, or
// searchAgain after the last search: not at each new metadata version.
func TestSearchDue(t *testing.T) {
	d := &domain{}
	vg := func(missing ...string) *lvm.VG {
		v := &lvm.VG{PVs: []lvm.PV{{ID: "found", Device: "/dev/sda"}}}
		for _, id := range missing {
			v.PVs = append(v.PVs, lvm.PV{ID: id})
		}
		return v
	}
	now := time.Now()
	steps := []struct {
		vg    *lvm.VG
		after time.Duration
		want  bool
	}{
		{vg("b", "a"), 0, true},
		{vg("a", "b"), time.Second, false}, // the same set, in another order
		{vg("a", "b"), 2 * time.Second, false},
		{vg("a"), 2 * time.Second, true}, // b was found
		{vg("a", "c"), 0, true},          // another went missing
		{vg("a", "c"), searchAgain - time.Nanosecond, false},
		{vg("a", "c"), searchAgain, true},
	}
	for i, s := range steps {
		now = now.Add(s.after)
		if got := d.searchDue(s.vg, now); got != s.want {
			t.Fatalf("step %d: search %v, want %v", i, got, s.want)
		}
	}
}
