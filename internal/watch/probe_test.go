package watch

import (
	"cmp"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/link"
	"github.com/lvwatch/lvwatch/internal/testutil"
	"golang.org/x/sys/unix"
)

// The two probes, attached at once with their own pins, see the same real bios
// and raise the same events: dev_t, sectors, which operations are writes, and
// the bios and high-water marks they count.
func TestDeviceProbesAgree(t *testing.T) {
	watchers := map[Probe]*Watcher{}
	for _, probe := range probes {
		watchers[probe] = openWatcher(t, probe)
	}
	dev := newBlockDev(t, "", 64*mib)
	dsync, err := unix.Open(dev.Path, unix.O_WRONLY|unix.O_DIRECT|unix.O_DSYNC|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(dsync)
	buf := alignedBuf(64 << 10)

	type seen struct {
		Events []Event
		Bios   uint64
		List   []Arming
	}
	got := map[Probe]*seen{}
	for probe := range watchers {
		got[probe] = &seen{}
	}
	// Each arming's crossing is read before the next arming replaces it.
	armBoth := func(threshold uint64) {
		for probe, w := range watchers {
			for _, ev := range pending(t, w) {
				ev.Cookie, ev.Queued, ev.Latency = 0, 0, 0 // each watcher's own
				got[probe].Events = append(got[probe].Events, ev)
			}
			mustArm(t, w, dev.Dev, threshold)
		}
	}
	armBoth(16 * mib)
	dev.write(t, buf, 16*mib-int64(len(buf))) // ends at the threshold
	dev.read(t, buf, 32*mib)
	dev.rangeIoctl(t, unix.BLKDISCARD, 32*mib, mib)
	if err := unix.Fsync(dev.fd); err != nil { // an empty preflush
		t.Fatal(err)
	}
	dev.rangeIoctl(t, unix.BLKZEROOUT, 20*mib, mib) // crosses
	armBoth(24 * mib)
	if _, err := unix.Pwrite(dsync, buf, 24*mib-4096); err != nil { // FUA where the device has it
		t.Fatal(err)
	}
	armBoth(40 * mib)
	dev.write(t, buf, 40*mib)
	armBoth(60 * mib)

	for probe, w := range watchers {
		s := got[probe]
		if len(s.Events) != 3 {
			t.Errorf("%s: %d events, want 3: %+v", probe, len(s.Events), s.Events)
		}
		c, err := w.Counters()
		if err != nil {
			t.Fatal(err)
		}
		s.Bios = c.Bios
		if s.List, err = w.List(); err != nil {
			t.Fatal(err)
		}
		for i := range s.List {
			s.List[i].Cookie = 0
		}
	}
	t.Logf("each saw %+v", *got[ProbeBTF])
	if !reflect.DeepEqual(got[ProbeBTF], got[ProbeTracepoint]) {
		t.Errorf("the probes disagree:\n%s: %+v\n%s: %+v", ProbeBTF, *got[ProbeBTF], ProbeTracepoint, *got[ProbeTracepoint])
	}
}

// With lvwatch attached by either probe, the operator's own tools on the same
// tracepoint still see every bio: perf (a classic tracepoint program's 0 would
// drop the event for every perf user) and another BPF program.
func TestDeviceOtherTracersSeeEveryBio(t *testing.T) {
	if _, err := exec.LookPath("perf"); err != nil {
		testutil.SkipOrFail(t, "perf not installed (make deps installs linux-perf)")
	}
	eachProbe(t, func(t *testing.T, probe Probe) {
		w := openWatcher(t, probe)
		dev := newBlockDev(t, "", 64*mib)
		mustArm(t, w, dev.Dev, 60*mib) // its bios take the gate's path, not past it
		counted := attachWriteCounter(t, dev.Dev)

		const writes = 200
		perf := exec.Command("perf", "stat", "-x", ",", "-a", "-e", "block:block_bio_queue",
			"--filter", fmt.Sprintf(`dev == %d && rwbs ~ "W*"`, dev.Dev.kernel()),
			"--", "dd", "if=/dev/zero", "of="+dev.Path, "bs=4096", "count="+strconv.Itoa(writes), "oflag=direct", "status=none")
		out, err := perf.CombinedOutput()
		if err != nil {
			t.Fatalf("perf stat: %v: %s", err, out)
		}
		if n, err := perfCount(out); err != nil || n != writes {
			t.Errorf("perf stat counted %d bios (%v), want %d:\n%s", n, err, writes, out)
		}
		if n := counted(); n != writes {
			t.Errorf("another BPF program on the tracepoint counted %d bios, want %d", n, writes)
		}
		if c, err := w.Counters(); err != nil || c.Bios < writes {
			t.Errorf("lvwatch counted %+v (%v), want at least %d bios", c, err, writes)
		}
	})
}

// perfCount reads the count from perf stat's CSV line for the tracepoint.
func perfCount(out []byte) (uint64, error) {
	for _, line := range strings.Split(string(out), "\n") {
		fields := strings.Split(line, ",")
		if len(fields) > 2 && fields[2] == "block:block_bio_queue" {
			return strconv.ParseUint(fields[0], 10, 64)
		}
	}
	return 0, errors.New("no count for block:block_bio_queue")
}

// attachWriteCounter attaches a classic tracepoint program to block_bio_queue
// that counts the writes to dev (rwbs W...) as another tracer would, and returns
// the count so far. It returns 1 itself, so that it drops nothing for perf.
func attachWriteCounter(t *testing.T, dev Dev) func() uint64 {
	t.Helper()
	count, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { count.Close() })
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Name:    "lvw_test_count",
		Type:    ebpf.TracePoint,
		License: "GPL",
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R2, asm.R1, 8, asm.Word), // the record's dev
			asm.JNE.Imm(asm.R2, int32(dev.kernel()), "exit"),
			asm.LoadMem(asm.R2, asm.R1, 28, asm.Byte), // rwbs[0]
			asm.JNE.Imm(asm.R2, 'W', "exit"),
			asm.StoreImm(asm.RFP, -4, 0, asm.Word),
			asm.LoadMapPtr(asm.R1, count.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -4),
			asm.FnMapLookupElem.Call(),
			asm.JEq.Imm(asm.R0, 0, "exit"),
			asm.Mov.Imm(asm.R1, 1),
			asm.StoreXAdd(asm.R0, asm.R1, asm.DWord),
			asm.Mov.Imm(asm.R0, 1).WithSymbol("exit"),
			asm.Return(),
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	l, err := link.Tracepoint("block", "block_bio_queue", prog, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return func() uint64 {
		var n uint64
		if err := count.Lookup(uint32(0), &n); err != nil {
			t.Fatal(err)
		}
		return n
	}
}

// A watcher restarted on a version whose probe differs (an older lvwatch
// pinned the classic tracepoint; this one attaches the BTF probe, or the other
// way round) takes over the pins: the maps are reused as they are, the new
// program is attached before the old link goes, so a writer running through
// the restart has every bio counted, the crossing made while no process ran is
// delivered, and the old link is gone.
func TestDeviceProbeUpgrade(t *testing.T) {
	for _, tc := range []struct{ from, to Probe }{{ProbeTracepoint, ProbeAuto}, {ProbeBTF, ProbeTracepoint}} {
		t.Run(fmt.Sprintf("%s-to-%s", tc.from, cmp.Or(string(tc.to), "auto")), func(t *testing.T) {
			requireProbe(t, ProbeBTF)
			testProbeUpgrade(t, tc.from, tc.to)
		})
	}
}

func testProbeUpgrade(t *testing.T, from, to Probe) {
	crossed := newBlockDev(t, "", 64*mib)
	busy := newBlockDev(t, "", 64*mib)
	dir := testPinDir(t)
	old := mustOpen(t, Options{PinDir: dir, Probe: from})
	cookie := mustArm(t, old, crossed.Dev, mib)
	mustArm(t, old, busy.Dev, 60*mib)
	oldLink, oldMap := pinnedLinkID(t, dir), mapID(t, old.objs.LvwWatch)
	before, err := old.Counters()
	if err != nil {
		t.Fatal(err)
	}
	if err := old.Close(); err != nil { // keeps the pins and the link
		t.Fatal(err)
	}
	crossed.write(t, alignedBuf(4096), 2*mib) // while no process reads

	// A writer on a watched device all through the restart.
	stop := make(chan struct{})
	var writes atomic.Uint64
	writerDone := make(chan error, 1)
	go func() {
		buf := alignedBuf(4096)
		for i := int64(0); ; i++ {
			select {
			case <-stop:
				writerDone <- nil
				return
			default:
			}
			if _, err := unix.Pwrite(busy.fd, buf, i%4096*4096); err != nil {
				writerDone <- err
				return
			}
			writes.Add(1)
		}
	}()
	w, err := Open(Options{PinDir: dir, Probe: to})
	close(stop)
	if werr := <-writerDone; werr != nil {
		t.Fatal(werr)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.CloseAndUnpin() })
	if w.Probe() == from {
		t.Fatalf("reopened with the probe of before, %s", from)
	}

	if ev := wantEvents(t, w, 1, "crossing during the restart")[0]; ev.Cookie != cookie {
		t.Errorf("cookie %d, want %d", ev.Cookie, cookie)
	}
	after, err := w.Counters()
	if err != nil {
		t.Fatal(err)
	}
	// Both programs run for an instant: a bio may count twice, none may go unseen.
	if seen, want := after.Bios-before.Bios, 1+writes.Load(); seen < want {
		t.Errorf("%d bios counted across the restart, want at least %d (1 crossing + %d writes)", seen, want, writes.Load())
	}
	if id := mapID(t, w.objs.LvwWatch); id != oldMap {
		t.Errorf("lvw_watch is map %d after the restart, want the pinned %d", id, oldMap)
	}
	if l, err := link.NewFromID(oldLink); !errors.Is(err, os.ErrNotExist) {
		if err == nil {
			l.Close()
		}
		t.Errorf("the old link %d is still there (%v)", oldLink, err)
	}
	if id := pinnedLinkID(t, dir); id == oldLink {
		t.Errorf("the pin still holds the old link %d", id)
	}
	next := mustArm(t, w, crossed.Dev, 4*mib)
	crossed.write(t, alignedBuf(4096), 4*mib)
	if ev := wantEvents(t, w, 1, "crossing after the restart")[0]; ev.Cookie != next {
		t.Errorf("cookie %d, want %d", ev.Cookie, next)
	}
}

func pinnedLinkID(t *testing.T, dir string) link.ID {
	t.Helper()
	l, err := link.LoadPinnedLink(filepath.Join(dir, linkPin), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return info.ID
}

func mapID(t *testing.T, m *ebpf.Map) ebpf.MapID {
	t.Helper()
	info, err := m.Info()
	if err != nil {
		t.Fatal(err)
	}
	id, _ := info.ID()
	return id
}
