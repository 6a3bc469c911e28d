package watch

import (
	"encoding/binary"
	"strings"
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
		// Each case on a fresh arming: Disarm forgets the writes of the last.
		if _, err := w.Disarm(fakeDev); err != nil {
			t.Fatal(err)
		}
		cookie := mustArm(t, w, fakeDev, threshold)
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

	first := mustArm(t, w, fakeDev, 8*512)
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

	second := mustArm(t, w, fakeDev, 64*512)
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
	// The thresholds lie above every write so far, so neither arming is past.
	mustArm(t, w, fakeDev, 200*512)
	third := mustArm(t, w, fakeDev, 200*512)
	r.bio(fakeDev, 200, 1, "W")
	r.bio(fakeDev, 200, 1, "W")
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
		mustArm(t, w, d, threshold)
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
	mustArm(t, w, sharer, 3000*512)
	if _, err := w.Disarm(owner); err != nil {
		t.Fatal(err)
	}
	if !w.gate.owns(sharer.kernel()) {
		t.Fatal("the slot did not pass to the remaining device")
	}
	r.bio(sharer, 3000, 8, "W")
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

	ringEvents := w.objs.LvwEvents.MaxEntries() / uint32(eventSize+8) // 8: the ring's record header
	devs := int(ringEvents) + 10
	for i := range devs {
		mustArm(t, w, Dev{Major: 4001, Minor: uint32(i)}, 0)
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

// Writes that go past the next threshold while no arming can see them (the LV
// is being extended) make Arm report Past, and no event comes for that arming.
func TestLogicArmReportsPast(t *testing.T) {
	w := openWatcher(t)
	r := bioRunner{t, loadTestProgram(t, w)}

	mustArm(t, w, fakeDev, 100*512)
	r.bio(fakeDev, 100, 8, "W") // crosses
	wantEvents(t, w, 1, "the first crossing")
	r.bio(fakeDev, 300, 8, "W") // past the next threshold, while unarmed
	r.bio(fakeDev, 50, 8, "R")  // reads do not count
	a, err := w.Arm(fakeDev, 200*512)
	if err != nil {
		t.Fatal(err)
	}
	if !a.Past || a.High != 308*512 {
		t.Fatalf("Arm after writes past 200 sectors = %+v, want Past with High %d", a, 308*512)
	}
	r.bio(fakeDev, 400, 8, "W")
	wantEvents(t, w, 0, "an arming already past")

	// Above the highest write: armed as usual, High still reported.
	a, err = w.Arm(fakeDev, 1000*512)
	if err != nil || a.Past || a.High != 408*512 {
		t.Fatalf("Arm above the high-water mark = %+v, %v; want armed, High %d", a, err, 408*512)
	}
	r.bio(fakeDev, 1000, 8, "W")
	if ev := wantEvents(t, w, 1, "past the armed threshold")[0]; ev.Cookie != a.Cookie {
		t.Errorf("cookie %d, want %d", ev.Cookie, a.Cookie)
	}

	// A new device of the same number (another diskseq; 0 here, since a fake
	// device has none) and Disarm both start without a high-water mark.
	if _, err := w.Disarm(fakeDev); err != nil {
		t.Fatal(err)
	}
	mustArm(t, w, fakeDev, 100*512)
	list, err := w.List()
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 1 || list[0].High != 0 || !list[0].Armed || list[0].Threshold != 100*512 {
		t.Errorf("List after Disarm and Arm = %+v", list)
	}
}

// Below a threshold armed before, writes pass the gate unrecorded: an arming
// there is taken as past rather than trusted to fire, since a write may already
// have gone beyond it.
func TestLogicLoweredThresholdIsPast(t *testing.T) {
	w := openWatcher(t)
	r := bioRunner{t, loadTestProgram(t, w)}

	mustArm(t, w, fakeDev, 1000*512)
	r.bio(fakeDev, 800, 100, "W") // ends at 900: below the gate's bound, not recorded
	a, err := w.Arm(fakeDev, 500*512)
	if err != nil || !a.Past {
		t.Fatalf("Arm below the earlier threshold = %+v, %v; want Past", a, err)
	}
	r.bio(fakeDev, 800, 200, "W")
	wantEvents(t, w, 0, "an arming taken as past")

	// Back at or above the highest threshold armed, the mark is exact again.
	if a, err := w.Arm(fakeDev, 1000*512); err != nil || a.Past {
		t.Fatalf("Arm at the earlier threshold = %+v, %v; want armed", a, err)
	}
	// Disarm forgets: a lower threshold then is trusted.
	if _, err := w.Disarm(fakeDev); err != nil {
		t.Fatal(err)
	}
	mustArm(t, w, fakeDev, 100*512)
}

// An event whose arming was replaced before Read returned it is dropped: the
// caller acts on the current arming only.
func TestLogicDropsStaleEvents(t *testing.T) {
	w := openWatcher(t)
	r := bioRunner{t, loadTestProgram(t, w)}

	mustArm(t, w, fakeDev, 100*512)
	r.bio(fakeDev, 100, 8, "W") // its event waits in the ring
	current := mustArm(t, w, fakeDev, 200*512)
	wantEvents(t, w, 0, "the replaced arming's crossing")
	r.bio(fakeDev, 200, 8, "W")
	if ev := wantEvents(t, w, 1, "the current arming's crossing")[0]; ev.Cookie != current {
		t.Errorf("cookie %d, want %d", ev.Cookie, current)
	}

	mustArm(t, w, otherDev, 100*512)
	r.bio(otherDev, 100, 8, "W")
	if _, err := w.Disarm(otherDev); err != nil {
		t.Fatal(err)
	}
	wantEvents(t, w, 0, "a disarmed device's crossing")
	c, err := w.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if c.Stale != 2 || c.Crossings != 3 {
		t.Errorf("counters %+v, want 2 stale of 3 crossings", c)
	}
}

// Arm either arms or leaves everything as it was: with lvw_watch full a new
// device is refused without a trace (no gate slot claimed, no cookie armed), and
// with lvw_armed full every device can still be armed again.
func TestLogicArmAllOrNothing(t *testing.T) {
	w := openWatcher(t)
	r := bioRunner{t, loadTestProgram(t, w)}

	// Fill lvw_watch with devices none of which shares the extra one's gate slot.
	extra := Dev{Major: 4095, Minor: 0xfffff}
	var devs []Dev
	for i := uint32(0); len(devs) < maxDevices; i++ {
		d := Dev{Major: 4002 + i>>12, Minor: i & 0xfff}
		if w.gate.index(d.kernel()) != w.gate.index(extra.kernel()) {
			devs = append(devs, d)
			mustArm(t, w, d, 100*512)
		}
	}
	if *w.gate.slotOf(extra.kernel()) != 0 {
		t.Fatal("the extra device's gate slot is taken")
	}
	if _, err := w.Arm(extra, 100*512); err == nil || !strings.Contains(err.Error(), "more devices than the watcher holds") {
		t.Fatalf("Arm of device %d = %v, want a full-map error", maxDevices+1, err)
	}
	if got := *w.gate.slotOf(extra.kernel()); got != 0 {
		t.Errorf("the refused device left its gate slot claimed: %#x", got)
	}
	if n := countKeys[uint64, uint32](t, w.objs.LvwArmed); n != maxDevices {
		t.Errorf("lvw_armed holds %d cookies after a refused Arm, want %d", n, maxDevices)
	}

	// lvw_armed is full: re-arming must still work, and the new arming fire.
	for _, d := range []Dev{devs[0], devs[len(devs)/2], devs[len(devs)-1]} {
		cookie := mustArm(t, w, d, 200*512)
		r.bio(d, 200, 8, "W")
		if ev := wantEvents(t, w, 1, "re-armed with lvw_armed full")[0]; ev.Cookie != cookie {
			t.Errorf("%s: cookie %d, want %d", d, ev.Cookie, cookie)
		}
	}
}

func countKeys[K, V any](t testing.TB, m *ebpf.Map) int {
	t.Helper()
	var k K
	var v V
	n := 0
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}
