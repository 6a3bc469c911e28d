package watch

import (
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf"
)

// bio drives lvw_bio_test, the program's logic without a device: one synthetic
// block_bio_queue record per call.
type bioRunner struct {
	t    *testing.T
	prog *ebpf.Program
}

func (r bioRunner) bio(dev Dev, sector uint64, nrSector uint32, rwbs string) {
	r.t.Helper()
	var packed [8]byte
	copy(packed[:], rwbs)
	ctx := []uint64{uint64(dev.kernel()), sector, uint64(nrSector), binary.LittleEndian.Uint64(packed[:])}
	if _, err := r.prog.Run(&ebpf.RunOptions{Context: ctx}); err != nil {
		r.t.Fatalf("test run: %v", err)
	}
}

// Devices no machine has, so real I/O never meets these tests' arms.
var (
	fakeDev  = Dev{Major: 4000, Minor: 1}
	otherDev = Dev{Major: 4000, Minor: 2}
)

func TestLogicOperations(t *testing.T) {
	w := openWatcher(t)
	r := bioRunner{t, loadTestProgram(t, w)}
	const threshold = 1000 * 512

	for _, tc := range []struct {
		rwbs   string
		sector uint64
		nr     uint32
		cross  bool
	}{
		{"W", 900, 100, false},  // ends exactly at the threshold
		{"W", 900, 101, true},   // ends one sector past it
		{"WS", 2000, 8, true},   // entirely beyond
		{"WFS", 999, 2, true},   // FUA write
		{"FWS", 999, 2, true},   // preflush then data
		{"FWS", 5000, 0, false}, // an empty flush
		{"F", 5000, 0, false},
		{"FF", 5000, 8, false}, // a flush operation, whatever its length
		{"N", 999, 8, true},    // write-zeroes
		{"N", 999, 0, false},
		{"R", 999, 8, false},
		{"RA", 999, 8, false},
		{"FR", 999, 8, false},
		{"D", 0, 4096, false}, // discard
		{"DE", 0, 4096, false},
		{"", 999, 8, false},
	} {
		cookie, err := w.Arm(fakeDev, threshold)
		if err != nil {
			t.Fatal(err)
		}
		r.bio(fakeDev, tc.sector, tc.nr, tc.rwbs)
		evs := pending(t, w)
		if !tc.cross {
			if len(evs) != 0 {
				t.Errorf("%q %d+%d: got %+v, want no event", tc.rwbs, tc.sector, tc.nr, evs)
			}
			continue
		}
		want := Event{Dev: fakeDev, Cookie: cookie, Offset: tc.sector * 512, Length: uint64(tc.nr) * 512, Threshold: threshold}
		if len(evs) != 1 {
			t.Errorf("%q %d+%d: got %d events, want 1", tc.rwbs, tc.sector, tc.nr, len(evs))
			continue
		}
		got := evs[0]
		if got.Dev != want.Dev || got.Cookie != want.Cookie || got.Offset != want.Offset || got.Length != want.Length || got.Threshold != want.Threshold {
			t.Errorf("%q %d+%d: got %+v, want %+v", tc.rwbs, tc.sector, tc.nr, got, want)
		}
	}
}

func TestLogicOneEventPerArming(t *testing.T) {
	w := openWatcher(t)
	r := bioRunner{t, loadTestProgram(t, w)}

	first, err := w.Arm(fakeDev, 8*512)
	if err != nil {
		t.Fatal(err)
	}
	r.bio(otherDev, 0, 64, "W") // unwatched
	r.bio(fakeDev, 0, 8, "W")   // below
	wantEvents(t, w, 0, "unwatched and below")
	for range 5 {
		r.bio(fakeDev, 8, 8, "W")
	}
	if ev := wantEvents(t, w, 1, "five writes past"); ev[0].Cookie != first {
		t.Errorf("cookie %d, want %d", ev[0].Cookie, first)
	}
	if armed, err := w.Disarm(fakeDev); err != nil || armed {
		t.Errorf("Disarm after the crossing = %v, %v; want false", armed, err)
	}
	r.bio(fakeDev, 100, 8, "W")
	wantEvents(t, w, 0, "after Disarm")

	second, err := w.Arm(fakeDev, 64*512)
	if err != nil {
		t.Fatal(err)
	}
	if second <= first {
		t.Errorf("cookies not increasing: %d then %d", first, second)
	}
	r.bio(fakeDev, 8, 8, "W") // past the old threshold only
	wantEvents(t, w, 0, "past the old threshold")
	r.bio(fakeDev, 60, 8, "W")
	if ev := wantEvents(t, w, 1, "past the new threshold"); ev[0].Cookie != second {
		t.Errorf("cookie %d, want %d", ev[0].Cookie, second)
	}

	// Re-arming before a crossing replaces the arming: one event, the new cookie.
	w.Arm(fakeDev, 0)
	third, _ := w.Arm(fakeDev, 0)
	r.bio(fakeDev, 0, 1, "W")
	r.bio(fakeDev, 0, 1, "W")
	if ev := wantEvents(t, w, 1, "re-armed twice"); ev[0].Cookie != third {
		t.Errorf("cookie %d, want %d", ev[0].Cookie, third)
	}
	if armed, err := w.Disarm(otherDev); err != nil || armed {
		t.Errorf("Disarm of a device never armed = %v, %v", armed, err)
	}

	c, err := w.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c.Crossings != 3 || c.Lost != 0 || c.Bios != 10 {
		t.Errorf("counters %+v, want 3 crossings, 0 lost, 10 bios on watched devices", c)
	}
}

// Devices that share a gate slot: the one that does not own it takes the exact
// path, and when the owner goes the slot passes to it rather than emptying.
func TestLogicSharedGateSlot(t *testing.T) {
	w := openWatcher(t)
	r := bioRunner{t, loadTestProgram(t, w)}
	owner, sharer := Dev{Major: 4000, Minor: 7}, Dev{Major: 4016, Minor: 7} // same fold
	if w.gate.slotOf(owner.kernel()) != w.gate.slotOf(sharer.kernel()) {
		t.Fatal("test devices do not share a slot")
	}
	// An unaligned threshold: the gate's 4 KiB bound sits below it, the exact
	// check decides.
	const threshold = 1001 * 512
	for _, d := range []Dev{owner, sharer} {
		if _, err := w.Arm(d, threshold); err != nil {
			t.Fatal(err)
		}
	}
	if !w.gate.owns(owner.kernel()) || w.gate.owns(sharer.kernel()) {
		t.Fatal("first armed device does not own the slot")
	}
	for _, d := range []Dev{owner, sharer} {
		r.bio(d, 993, 8, "W") // ends exactly at the threshold
		wantEvents(t, w, 0, d.String()+" at the threshold")
		r.bio(d, 994, 8, "W")
		wantEvents(t, w, 1, d.String()+" one sector past")
	}
	if _, err := w.Arm(sharer, threshold); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Disarm(owner); err != nil {
		t.Fatal(err)
	}
	if !w.gate.owns(sharer.kernel()) {
		t.Fatal("the slot did not pass to the remaining device")
	}
	r.bio(sharer, 2000, 8, "W")
	wantEvents(t, w, 1, "remaining device after the owner left")
	if _, err := w.Disarm(sharer); err != nil {
		t.Fatal(err)
	}
	if got := *w.gate.slotOf(sharer.kernel()); got != 0 {
		t.Errorf("slot %#x after the last device left, want empty", got)
	}
	c, _ := w.Counters()
	if c.Bios != 5 {
		t.Errorf("counted %d bios on watched devices, want 5", c.Bios)
	}
}

// A crossing that finds the ring full is not lost: the device stays armed and the
// next write past the threshold reports it.
func TestLogicFullRingKeepsArmed(t *testing.T) {
	w := openWatcher(t)
	r := bioRunner{t, loadTestProgram(t, w)}

	ringEvents := w.objs.LvwEvents.MaxEntries() / (eventSize + 8) // 8: the ring's record header
	devs := int(ringEvents) + 10
	for i := range devs {
		if _, err := w.Arm(Dev{Major: 4001, Minor: uint32(i)}, 0); err != nil {
			t.Fatal(err)
		}
	}
	for i := range devs {
		r.bio(Dev{Major: 4001, Minor: uint32(i)}, 0, 1, "W")
	}
	c, _ := w.Counters()
	if c.Lost == 0 || c.Crossings+c.Lost != uint64(devs) {
		t.Fatalf("counters %+v after %d crossings into a ring of about %d events", c, devs, ringEvents)
	}
	first := len(pending(t, w))
	for i := range devs {
		r.bio(Dev{Major: 4001, Minor: uint32(i)}, 0, 1, "W")
	}
	second := len(pending(t, w))
	if first+second != devs {
		t.Errorf("%d + %d events for %d crossings", first, second, devs)
	}
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add(make([]byte, eventSize))
	f.Add([]byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, b []byte) {
		ev, err := decodeEvent(b, 0)
		if err != nil {
			if len(b) >= eventSize {
				t.Fatalf("%d bytes rejected: %v", len(b), err)
			}
			return
		}
		if ev.Offset%sectorSize != 0 || ev.Length%sectorSize != 0 || ev.Dev.Minor >= 1<<20 {
			t.Fatalf("decoded %+v", ev)
		}
	})
}
