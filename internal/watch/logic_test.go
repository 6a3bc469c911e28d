package watch

import (
	"encoding/binary"
	"os"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/lvwatch/lvwatch/internal/testutil"
)

// operation is a bio's operation as each probe's program reads it: the letters
// blk_fill_rwbs writes into the record, and the bio's bi_opf, from the names of
// the kernel's enum req_op and enum req_flag_bits.
type operation struct {
	rwbs  string
	op    string   // REQ_OP_*; "" for a record no bio makes
	flags []string // __REQ_*
}

var (
	opWrite = operation{rwbs: "W", op: "REQ_OP_WRITE"}
	opRead  = operation{rwbs: "R", op: "REQ_OP_READ"}
)

// bioRunner drives the BPF_PROG_TEST_RUN twin of one probe's program: the
// watcher's logic without a device, one synthetic bio per call.
type bioRunner struct {
	t     *testing.T
	probe Probe
	prog  *ebpf.Program
	ops   kernelOps // for ProbeBTF
}

// twinOf names each probe's twin in bpf/lvwatch.c.
var twinOf = map[Probe]string{ProbeTracepoint: bpfProgLvwTestRec, ProbeBTF: bpfProgLvwTestBio}

// eachTwin runs test once per probe, on a watcher of its own driven by that
// probe's twin.
func eachTwin(t *testing.T, test func(t *testing.T, w *Watcher, r bioRunner)) {
	eachProbe(t, func(t *testing.T, probe Probe) {
		w := openWatcher(t, probe)
		r := bioRunner{t: t, probe: probe, prog: loadTestProgram(t, w, twinOf[probe])}
		if probe == ProbeBTF {
			r.ops = loadKernelOps(t)
		}
		test(t, w, r)
	})
}

// bio runs one bio of nrSector sectors from sector through the twin, which
// reports false for an operation its probe never sees.
func (r bioRunner) bio(dev Dev, sector uint64, nrSector uint32, o operation) bool {
	r.t.Helper()
	var ctx []uint64
	switch r.probe {
	case ProbeTracepoint:
		var rwbs [8]byte
		copy(rwbs[:], o.rwbs)
		ctx = []uint64{uint64(dev.kernel()), sector, uint64(nrSector), binary.LittleEndian.Uint64(rwbs[:])}
	case ProbeBTF:
		if o.op == "" {
			return false
		}
		ctx = []uint64{uint64(dev.kernel()), sector, uint64(nrSector) * sectorSize, r.ops.opf(r.t, o)}
	}
	if _, err := r.prog.Run(&ebpf.RunOptions{Context: ctx}); err != nil {
		r.t.Fatalf("test run: %v", err)
	}
	return true
}

func (r bioRunner) write(dev Dev, sector uint64, nrSector uint32) {
	r.t.Helper()
	r.bio(dev, sector, nrSector, opWrite)
}

// kernelOps are the running kernel's numbers of block operations and request
// flag bits, from its BTF: they change between versions (6.18 renumbered the
// zone operations), and the BTF program reads them by CO-RE.
type kernelOps map[string]uint64

func loadKernelOps(t testing.TB) kernelOps {
	t.Helper()
	spec, err := btf.LoadKernelSpec()
	if err != nil {
		testutil.SkipOrFail(t, "kernel BTF: "+err.Error())
	}
	ops := kernelOps{}
	for _, name := range []string{"req_op", "req_flag_bits"} {
		var e *btf.Enum
		if err := spec.TypeByName(name, &e); err != nil {
			t.Fatalf("enum %s in the kernel's BTF: %v", name, err)
		}
		for _, v := range e.Values {
			ops[v.Name] = v.Value
		}
	}
	return ops
}

// opf is o's bi_opf: the operation's number, with a bit per flag.
func (k kernelOps) opf(t testing.TB, o operation) uint64 {
	t.Helper()
	opf, ok := k[o.op]
	if !ok {
		t.Fatalf("the kernel has no %s", o.op)
	}
	for _, f := range o.flags {
		bit, ok := k[f]
		if !ok {
			t.Fatalf("the kernel has no %s", f)
		}
		opf |= 1 << bit
	}
	return opf
}

// rwbsNamesZones reports whether this kernel's blk_fill_rwbs names the zone
// operations (Z...) rather than N: it widened rwbs to 10 bytes when it did.
func rwbsNamesZones(t testing.TB) bool {
	t.Helper()
	text, err := os.ReadFile(tracepointFormat)
	if err != nil {
		t.Fatal(err)
	}
	fields, err := parseFormat(string(text))
	if err != nil {
		t.Fatal(err)
	}
	return fields["rwbs"].Size >= 10
}

// Devices no machine has, so real I/O never meets these tests' arms.
var (
	fakeDev  = Dev{Major: 4000, Minor: 1}
	otherDev = Dev{Major: 4000, Minor: 2}
)

// Each probe counts as writes the operations blk_fill_rwbs names W, or N with
// data; the BTF program decodes bi_opf to the same answer.
func TestLogicOperations(t *testing.T) {
	zoneAppend := operation{rwbs: "N", op: "REQ_OP_ZONE_APPEND"}
	zoneReset := operation{rwbs: "N", op: "REQ_OP_ZONE_RESET"}
	zoneAppendCounts := !rwbsNamesZones(t) // zone append carries data: a write where rwbs says N
	if !zoneAppendCounts {
		zoneAppend.rwbs, zoneReset.rwbs = "ZA", "ZR"
	}
	eachTwin(t, func(t *testing.T, w *Watcher, r bioRunner) {
		const threshold = 1000 * 512
		for _, tc := range []struct {
			op     operation
			sector uint64
			nr     uint32
			cross  bool
		}{
			{opWrite, 900, 100, false}, // ends exactly at the threshold
			{opWrite, 900, 101, true},  // ends one sector past it
			{operation{"WS", "REQ_OP_WRITE", []string{"__REQ_SYNC", "__REQ_IDLE"}}, 2000, 8, true}, // entirely beyond
			{operation{"WFS", "REQ_OP_WRITE", []string{"__REQ_FUA", "__REQ_SYNC"}}, 999, 2, true},
			{operation{"FWS", "REQ_OP_WRITE", []string{"__REQ_PREFLUSH", "__REQ_SYNC"}}, 999, 2, true},   // preflush then data
			{operation{"FWS", "REQ_OP_WRITE", []string{"__REQ_PREFLUSH", "__REQ_SYNC"}}, 5000, 0, false}, // an empty flush
			{operation{"F", "REQ_OP_FLUSH", nil}, 5000, 0, false},
			{operation{"FF", "REQ_OP_FLUSH", []string{"__REQ_PREFLUSH"}}, 5000, 8, false}, // a flush operation, whatever its length
			{operation{"FF", "REQ_OP_FLUSH", []string{"__REQ_FUA"}}, 5000, 8, false},
			{operation{"N", "REQ_OP_WRITE_ZEROES", nil}, 999, 8, true},
			{operation{"N", "REQ_OP_WRITE_ZEROES", nil}, 999, 0, false},
			{operation{"FN", "REQ_OP_WRITE_ZEROES", []string{"__REQ_PREFLUSH"}}, 999, 8, true},
			{opRead, 999, 8, false},
			{operation{"RA", "REQ_OP_READ", []string{"__REQ_RAHEAD"}}, 999, 8, false},
			{operation{"FR", "REQ_OP_READ", []string{"__REQ_PREFLUSH"}}, 999, 8, false},
			{operation{"RSM", "REQ_OP_READ", []string{"__REQ_SYNC", "__REQ_META"}}, 999, 8, false},
			{operation{"D", "REQ_OP_DISCARD", nil}, 0, 4096, false},
			{operation{"DE", "REQ_OP_SECURE_ERASE", nil}, 0, 4096, false},
			{zoneAppend, 999, 8, zoneAppendCounts},
			{zoneReset, 999, 0, false},
			{operation{"", "", nil}, 999, 8, false},
		} {
			// Each case on a fresh arming: Disarm forgets the writes of the last.
			if _, err := w.Disarm(fakeDev); err != nil {
				t.Fatal(err)
			}
			cookie := mustArm(t, w, fakeDev, threshold)
			if !r.bio(fakeDev, tc.sector, tc.nr, tc.op) {
				continue
			}
			evs := pending(t, w)
			if !tc.cross {
				if len(evs) != 0 {
					t.Errorf("%+v %d+%d: got %+v, want no event", tc.op, tc.sector, tc.nr, evs)
				}
				continue
			}
			want := Event{Dev: fakeDev, Cookie: cookie, Offset: tc.sector * 512, Length: uint64(tc.nr) * 512, Threshold: threshold}
			if len(evs) != 1 {
				t.Errorf("%+v %d+%d: got %d events, want 1", tc.op, tc.sector, tc.nr, len(evs))
				continue
			}
			got := evs[0]
			if got.Dev != want.Dev || got.Cookie != want.Cookie || got.Offset != want.Offset || got.Length != want.Length || got.Threshold != want.Threshold {
				t.Errorf("%+v %d+%d: got %+v, want %+v", tc.op, tc.sector, tc.nr, got, want)
			}
		}
	})
}

func TestLogicOneEventPerArming(t *testing.T) {
	eachTwin(t, func(t *testing.T, w *Watcher, r bioRunner) {

		first := mustArm(t, w, fakeDev, 8*512)
		r.write(otherDev, 0, 64) // unwatched
		r.write(fakeDev, 0, 8)   // below
		wantEvents(t, w, 0, "unwatched and below")
		for range 5 {
			r.write(fakeDev, 8, 8)
		}
		if ev := wantEvents(t, w, 1, "five writes past"); ev[0].Cookie != first {
			t.Errorf("cookie %d, want %d", ev[0].Cookie, first)
		}
		if armed, err := w.Disarm(fakeDev); err != nil || armed {
			t.Errorf("Disarm after the crossing = %v, %v; want false", armed, err)
		}
		r.write(fakeDev, 100, 8)
		wantEvents(t, w, 0, "after Disarm")

		second := mustArm(t, w, fakeDev, 64*512)
		if second <= first {
			t.Errorf("cookies not increasing: %d then %d", first, second)
		}
		r.write(fakeDev, 8, 8) // past the old threshold only
		wantEvents(t, w, 0, "past the old threshold")
		r.write(fakeDev, 60, 8)
		if ev := wantEvents(t, w, 1, "past the new threshold"); ev[0].Cookie != second {
			t.Errorf("cookie %d, want %d", ev[0].Cookie, second)
		}

		// Re-arming before a crossing replaces the arming: one event, the new cookie.
		// The thresholds lie above every write so far, so neither arming is past.
		mustArm(t, w, fakeDev, 200*512)
		third := mustArm(t, w, fakeDev, 200*512)
		r.write(fakeDev, 200, 1)
		r.write(fakeDev, 200, 1)
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
	})
}

// Devices that share a gate slot: the one that does not own it takes the exact
// path, and when the owner goes the slot passes to it rather than emptying.
func TestLogicSharedGateSlot(t *testing.T) {
	eachTwin(t, func(t *testing.T, w *Watcher, r bioRunner) {
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
			r.write(d, 993, 8) // ends exactly at the threshold
			wantEvents(t, w, 0, d.String()+" at the threshold")
			r.write(d, 994, 8)
			wantEvents(t, w, 1, d.String()+" one sector past")
		}
		mustArm(t, w, sharer, 3000*512)
		if _, err := w.Disarm(owner); err != nil {
			t.Fatal(err)
		}
		if !w.gate.owns(sharer.kernel()) {
			t.Fatal("the slot did not pass to the remaining device")
		}
		r.write(sharer, 3000, 8)
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
	})
}

// A crossing that finds the ring full is not lost: the device stays armed and the
// next write past the threshold reports it.
func TestLogicFullRingKeepsArmed(t *testing.T) {
	eachTwin(t, func(t *testing.T, w *Watcher, r bioRunner) {

		ringEvents := w.objs.LvwEvents.MaxEntries() / uint32(eventSize+8) // 8: the ring's record header
		devs := int(ringEvents) + 10
		for i := range devs {
			mustArm(t, w, Dev{Major: 4001, Minor: uint32(i)}, 0)
		}
		for i := range devs {
			r.write(Dev{Major: 4001, Minor: uint32(i)}, 0, 1)
		}
		c, _ := w.Counters()
		if c.Lost == 0 || c.Crossings+c.Lost != uint64(devs) {
			t.Fatalf("counters %+v after %d crossings into a ring of about %d events", c, devs, ringEvents)
		}
		first := len(pending(t, w))
		for i := range devs {
			r.write(Dev{Major: 4001, Minor: uint32(i)}, 0, 1)
		}
		second := len(pending(t, w))
		if first+second != devs {
			t.Errorf("%d + %d events for %d crossings", first, second, devs)
		}
	})
}

// Writes that go past the next threshold while no arming can see them (the LV
// is being extended) make Arm report Past, and no event comes for that arming.
func TestLogicArmReportsPast(t *testing.T) {
	eachTwin(t, func(t *testing.T, w *Watcher, r bioRunner) {

		mustArm(t, w, fakeDev, 100*512)
		r.write(fakeDev, 100, 8) // crosses
		wantEvents(t, w, 1, "the first crossing")
		r.write(fakeDev, 300, 8)      // past the next threshold, while unarmed
		r.bio(fakeDev, 50, 8, opRead) // reads do not count
		a, err := w.Arm(fakeDev, 200*512)
		if err != nil {
			t.Fatal(err)
		}
		if !a.Past || a.High != 308*512 {
			t.Fatalf("Arm after writes past 200 sectors = %+v, want Past with High %d", a, 308*512)
		}
		r.write(fakeDev, 400, 8)
		wantEvents(t, w, 0, "an arming already past")

		// Above the highest write: armed as usual, High still reported.
		a, err = w.Arm(fakeDev, 1000*512)
		if err != nil || a.Past || a.High != 408*512 {
			t.Fatalf("Arm above the high-water mark = %+v, %v; want armed, High %d", a, err, 408*512)
		}
		r.write(fakeDev, 1000, 8)
		if ev := wantEvents(t, w, 1, "past the armed threshold")[0]; ev.Cookie != a.Cookie {
			t.Errorf("cookie %d, want %d", ev.Cookie, a.Cookie)
		}
		r.write(fakeDev, 1100, 8) // after the crossing: High follows, armed or not
		if high, err := w.High(fakeDev); err != nil || high != 1108*512 {
			t.Errorf("High = %d, %v; want %d", high, err, 1108*512)
		}

		// A new device of the same number (another diskseq; 0 here, since a fake
		// device has none) and Disarm both start without a high-water mark.
		if _, err := w.Disarm(fakeDev); err != nil {
			t.Fatal(err)
		}
		if high, err := w.High(fakeDev); err != nil || high != 0 {
			t.Errorf("High after Disarm = %d, %v; want 0", high, err)
		}
		mustArm(t, w, fakeDev, 100*512)
		list, err := w.List()
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 1 || list[0].High != 0 || !list[0].Armed || list[0].Threshold != 100*512 {
			t.Errorf("List after Disarm and Arm = %+v", list)
		}
	})
}

// Below a threshold armed before, writes pass the gate unrecorded: an arming
// there is taken as past rather than trusted to fire, since a write may already
// have gone beyond it.
func TestLogicLoweredThresholdIsPast(t *testing.T) {
	eachTwin(t, func(t *testing.T, w *Watcher, r bioRunner) {

		mustArm(t, w, fakeDev, 1000*512)
		r.write(fakeDev, 800, 100) // ends at 900: below the gate's bound, not recorded
		a, err := w.Arm(fakeDev, 500*512)
		if err != nil || !a.Past {
			t.Fatalf("Arm below the earlier threshold = %+v, %v; want Past", a, err)
		}
		r.write(fakeDev, 800, 200)
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
	})
}

// An event whose arming was replaced before Read returned it is dropped: the
// caller acts on the current arming only.
func TestLogicDropsStaleEvents(t *testing.T) {
	eachTwin(t, func(t *testing.T, w *Watcher, r bioRunner) {

		mustArm(t, w, fakeDev, 100*512)
		r.write(fakeDev, 100, 8) // its event waits in the ring
		current := mustArm(t, w, fakeDev, 200*512)
		wantEvents(t, w, 0, "the replaced arming's crossing")
		r.write(fakeDev, 200, 8)
		if ev := wantEvents(t, w, 1, "the current arming's crossing")[0]; ev.Cookie != current {
			t.Errorf("cookie %d, want %d", ev.Cookie, current)
		}

		mustArm(t, w, otherDev, 100*512)
		r.write(otherDev, 100, 8)
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
	})
}

// Arm either arms or leaves everything as it was: with lvw_watch full a new
// device is refused without a trace (no gate slot claimed, no cookie armed), and
// with lvw_armed full every device can still be armed again.
func TestLogicArmAllOrNothing(t *testing.T) {
	eachTwin(t, func(t *testing.T, w *Watcher, r bioRunner) {

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
			r.write(d, 200, 8)
			if ev := wantEvents(t, w, 1, "re-armed with lvw_armed full")[0]; ev.Cookie != cookie {
				t.Errorf("%s: cookie %d, want %d", d, ev.Cookie, cookie)
			}
		}
	})
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
