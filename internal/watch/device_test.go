package watch

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lvwatch/lvwatch/internal/testutil"
	"golang.org/x/sys/unix"
)

const mib = 1 << 20

func TestDeviceCrossings(t *testing.T) { eachProbe(t, testDeviceCrossings) }

func testDeviceCrossings(t *testing.T, probe Probe) {
	w := openWatcher(t, probe)
	dev := newBlockDev(t, "", 64*mib)
	other := newBlockDev(t, "", 64*mib)
	buf := alignedBuf(64 << 10)

	cookie := mustArm(t, w, dev.Dev, 16*mib)
	dev.write(t, buf, 16*mib-int64(len(buf)))       // ends exactly at the threshold
	dev.read(t, buf, 32*mib)                        // a read past it
	dev.rangeIoctl(t, unix.BLKDISCARD, 32*mib, mib) // a discard past it
	other.write(t, buf, 32*mib)                     // an unwatched device
	wantEvents(t, w, 0, "below, read, discard, unwatched")

	dev.write(t, buf, 16*mib-4096) // ends 60 KiB past
	ev := wantEvents(t, w, 1, "crossing write")[0]
	want := Event{Dev: dev.Dev, Cookie: cookie, Offset: 16*mib - 4096, Length: uint64(len(buf)), Threshold: 16 * mib,
		PID: uint32(os.Getpid()), Comm: commOf(t)}
	if ev.Dev != want.Dev || ev.Cookie != want.Cookie || ev.Offset != want.Offset || ev.Length != want.Length ||
		ev.Threshold != want.Threshold || ev.PID != want.PID || ev.Comm != want.Comm {
		t.Errorf("event %+v, want %+v", ev, want)
	}
	if ev.Latency <= 0 {
		t.Errorf("latency %v, want > 0", ev.Latency)
	}

	dev.write(t, buf, 20*mib)
	wantEvents(t, w, 0, "write after the crossing, not re-armed")

	mustArm(t, w, dev.Dev, 32*mib)
	dev.write(t, buf, 20*mib)
	wantEvents(t, w, 0, "below the new threshold")
	dev.rangeIoctl(t, unix.BLKZEROOUT, 40*mib, mib) // write-zeroes counts as a write
	if ev := wantEvents(t, w, 1, "write-zeroes past the new threshold")[0]; ev.Offset != 40*mib {
		t.Errorf("write-zeroes event at %d, want %d", ev.Offset, 40*mib)
	}
}

// commOf is the kernel's name for this process, as the program records it.
func commOf(t testing.TB) string {
	b, err := os.ReadFile("/proc/self/comm")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func TestDeviceRacingWriters(t *testing.T) { eachProbe(t, testDeviceRacingWriters) }

func testDeviceRacingWriters(t *testing.T, probe Probe) {
	w := openWatcher(t, probe)
	dev := newBlockDev(t, "", 64*mib)
	const writers = 8
	for round := range 20 {
		threshold := uint64(8+round) * mib // above every write of the rounds before
		mustArm(t, w, dev.Dev, threshold)
		var start, done sync.WaitGroup
		start.Add(1)
		for i := range writers {
			done.Add(1)
			go func() {
				defer done.Done()
				buf := alignedBuf(4096)
				start.Wait()
				dev.write(t, buf, int64(threshold)+int64(i)*4096)
			}()
		}
		start.Done()
		done.Wait()
		if evs := pending(t, w); len(evs) != 1 {
			t.Fatalf("round %d: %d writers crossing together gave %d events, want 1", round, writers, len(evs))
		}
	}
}

func TestDeviceEventsSurviveRestart(t *testing.T) { eachProbe(t, testDeviceEventsSurviveRestart) }

func testDeviceEventsSurviveRestart(t *testing.T, probe Probe) {
	dev := newBlockDev(t, "", 64*mib)
	opts := Options{PinDir: testPinDir(t), Probe: probe}
	w := mustOpen(t, opts)
	a, err := w.Arm(dev.Dev, mib)
	if err != nil {
		w.CloseAndUnpin()
		t.Fatal(err)
	}
	cookie := a.Cookie
	if _, err := Open(opts); !errors.Is(err, ErrBusy) {
		t.Errorf("second Open = %v, want ErrBusy", err)
	}
	if err := w.Close(); err != nil { // keeps the pins
		t.Fatal(err)
	}

	dev.write(t, alignedBuf(4096), 2*mib) // crosses while no process reads

	w = mustOpen(t, opts)
	t.Cleanup(func() { w.CloseAndUnpin() })
	if ev := wantEvents(t, w, 1, "crossing during the restart")[0]; ev.Cookie != cookie {
		t.Errorf("cookie %d, want %d", ev.Cookie, cookie)
	}
	next := mustArm(t, w, dev.Dev, 4*mib)
	if next <= cookie {
		t.Errorf("cookie after restart %d, not above %d", next, cookie)
	}
	dev.write(t, alignedBuf(4096), 4*mib)
	wantEvents(t, w, 1, "crossing after the restart")
}

// bpftool, the operator's view: the pinned maps show their fields by name.
func TestDeviceBpftoolShowsFields(t *testing.T) {
	w := openWatcher(t, ProbeAuto)
	if _, err := exec.LookPath("bpftool"); err != nil {
		testutil.SkipOrFail(t, "bpftool not installed (make deps installs it)")
	}
	mustArm(t, w, fakeDev, 7*mib)
	out, err := exec.Command("bpftool", "map", "dump", "pinned", w.pinDir+"/lvw_watch").CombinedOutput()
	if err != nil {
		t.Fatalf("bpftool: %v: %s", err, out)
	}
	for _, field := range []string{`"threshold": 14336`, `"cookie":`} {
		if !strings.Contains(string(out), field) {
			t.Errorf("bpftool output lacks %s:\n%s", field, out)
		}
	}
}

// The gate is derived state: a pin that went missing is rebuilt from lvw_watch
// before the new program runs, so an armed device still raises its event.
func TestDeviceGateRebuiltFromArmings(t *testing.T) { eachProbe(t, testDeviceGateRebuiltFromArmings) }

func testDeviceGateRebuiltFromArmings(t *testing.T, probe Probe) {
	dev := newBlockDev(t, "", 64*mib)
	opts := Options{PinDir: testPinDir(t), Probe: probe}
	w := mustOpen(t, opts)
	cookie := mustArm(t, w, dev.Dev, 8*mib)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(opts.PinDir, "lvw_gate")); err != nil {
		t.Fatal(err)
	}
	w = mustOpen(t, opts)
	t.Cleanup(func() { w.CloseAndUnpin() })
	dev.write(t, alignedBuf(4096), 8*mib)
	if ev := wantEvents(t, w, 1, "crossing after the gate pin went missing")[0]; ev.Cookie != cookie {
		t.Errorf("cookie %d, want %d", ev.Cookie, cookie)
	}
}

// Close excludes Arm, Disarm, List and Counters: racing it never touches the
// unmapped gate or closed maps, and afterwards they return ErrClosed.
func TestDeviceCloseRacesArm(t *testing.T) {
	requireBPF(t)
	for round := range 5 {
		w, err := Open(Options{PinDir: testPinDir(t)})
		if err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		errs := make(chan error, 64)
		for g := range 16 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				d := Dev{Major: 4003, Minor: uint32(g)}
				for i := 0; ; i++ {
					var err error
					switch i % 4 {
					case 0, 1:
						_, err = w.Arm(d, uint64(i)*mib)
					case 2:
						_, err = w.List()
					case 3:
						_, err = w.Disarm(d)
					}
					if errors.Is(err, ErrClosed) {
						return
					}
					if err != nil {
						errs <- err
						return
					}
				}
			}()
		}
		time.Sleep(time.Duration(round) * time.Millisecond)
		if err := w.CloseAndUnpin(); err != nil {
			t.Fatal(err)
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("round %d: %v", round, err)
		}
		if _, err := w.Counters(); !errors.Is(err, ErrClosed) {
			t.Errorf("Counters after Close = %v, want ErrClosed", err)
		}
		if err := w.Close(); !errors.Is(err, ErrClosed) {
			t.Errorf("second Close = %v, want ErrClosed", err)
		}
	}
}

// The block layer reports a partition's writes on its whole disk at disk
// sectors, so arming a partition would never fire: Arm refuses it.
func TestDevicePartitionRefused(t *testing.T) { eachProbe(t, testDevicePartitionRefused) }

func testDevicePartitionRefused(t *testing.T, probe Probe) {
	w := openWatcher(t, probe)
	disk := newPartitionedLoop(t, 64*mib, 2048, 32768) // one partition at 1 MiB, 16 MiB long
	part, err := DevOf(disk.Path + "p1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Arm(part, 4*mib); !errors.Is(err, ErrPartition) {
		t.Fatalf("Arm of the partition = %v, want ErrPartition", err)
	}
	// What the refusal rests on: a write to the partition is the disk's, at
	// the partition's offset on it.
	mustArm(t, w, disk.Dev, 4*mib)
	testutil.WriteDirect(t, disk.Path+"p1", 4*mib)
	if ev := wantEvents(t, w, 1, "write to the partition")[0]; ev.Dev != disk.Dev || ev.Offset != mib+4*mib {
		t.Errorf("event %+v, want dev %s at offset %d", ev, disk.Dev, mib+4*mib)
	}
}

// An arming outlives its device (an LV deactivated while armed); a later device
// of the same number has another diskseq, and Prune disarms the stale entry
// before it can raise an event for the wrong disk.
func TestDevicePruneReusedNumber(t *testing.T) { eachProbe(t, testDevicePruneReusedNumber) }

func testDevicePruneReusedNumber(t *testing.T, probe Probe) {
	w := openWatcher(t, probe)
	backing := filepath.Join(t.TempDir(), "other.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, 64*mib); err != nil {
		t.Fatal(err)
	}
	var dev *blockDev
	for attempt := 0; dev == nil; attempt++ {
		if attempt == 3 {
			t.Fatal("other processes took the loop device's number three times")
		}
		d := newBlockDev(t, "", 64*mib)
		mustArm(t, w, d.Dev, 8*mib)
		if pruned, err := w.Prune(); err != nil || len(pruned) != 0 {
			t.Fatalf("Prune with the device in place = %+v, %v; want nothing", pruned, err)
		}
		list, err := w.List()
		if err != nil || len(list) != 1 || list[0].DiskSeq == 0 {
			t.Fatalf("List = %+v, %v; want one arming with a diskseq", list, err)
		}
		// The same loop device, detached and attached to another file: a new disk.
		if d.reattach(t, backing) {
			dev = d
		} else if _, err := w.Disarm(d.Dev); err != nil {
			t.Fatal(err)
		}
	}
	// Until pruned, the program still fires for the number; Read drops the event.
	testutil.WriteDirect(t, dev.Path, 16*mib)
	wantEvents(t, w, 0, "write to the new disk of an armed number")
	if c, err := w.Counters(); err != nil || c.Stale != 1 || c.Crossings != 1 {
		t.Errorf("counters %+v, %v; want the crossing dropped as stale", c, err)
	}
	pruned, err := w.Prune()
	if err != nil || len(pruned) != 1 || pruned[0].Dev != dev.Dev {
		t.Fatalf("Prune after the number was reused = %+v, %v; want %s", pruned, err, dev.Dev)
	}
	testutil.WriteDirect(t, dev.Path, 32*mib)
	wantEvents(t, w, 0, "write to the new disk of a pruned number")
	if list, err := w.List(); err != nil || len(list) != 0 {
		t.Errorf("List after Prune = %+v, %v", list, err)
	}
}

// Open refuses to attach the classic tracepoint to a kernel whose record differs
// from what the program reads, rather than watch garbage; the BTF probe, which
// reads the bio, does without the record.
func TestDeviceOpenChecksRecordLayout(t *testing.T) {
	requireBPF(t)
	moved := strings.Replace(format618, "field:dev_t dev;\toffset:8;", "field:dev_t dev;\toffset:12;", 1)
	path := filepath.Join(t.TempDir(), "format")
	if err := os.WriteFile(path, []byte(moved), 0o600); err != nil {
		t.Fatal(err)
	}
	saved := tracepointFormat
	tracepointFormat = path
	defer func() { tracepointFormat = saved }()
	w, err := Open(Options{PinDir: testPinDir(t), Probe: ProbeTracepoint})
	if err == nil {
		w.CloseAndUnpin()
		t.Fatal("Open accepted a record with dev at offset 12")
	}
	if !strings.Contains(err.Error(), `field "dev" at offset 12, want 8`) {
		t.Errorf("Open: %v, want the field named", err)
	}

	requireProbe(t, ProbeBTF)
	w = mustOpen(t, Options{PinDir: testPinDir(t)})
	defer w.CloseAndUnpin()
	if w.Probe() != ProbeBTF {
		t.Errorf("Open chose %s on a kernel with BTF, want %s", w.Probe(), ProbeBTF)
	}
}

// Open finishes what a process that died mid-Disarm left: cookies and
// high-water marks of devices no longer watched, and armings of devices gone.
func TestDeviceOpenCleansLeftovers(t *testing.T) {
	requireBPF(t)
	dev := newBlockDev(t, "", 64*mib)
	opts := Options{PinDir: testPinDir(t)}
	w := mustOpen(t, opts)
	mustArm(t, w, dev.Dev, 8*mib)
	mustArm(t, w, fakeDev, 8*mib) // no such device: pruned at the next Open
	stray := Dev{Major: 4004, Minor: 1}
	if err := w.objs.LvwArmed.Put(uint64(1), stray.kernel()); err != nil {
		t.Fatal(err)
	}
	if err := w.objs.LvwHigh.Put(stray.kernel(), uint64(99)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	w = mustOpen(t, opts)
	t.Cleanup(func() { w.CloseAndUnpin() })
	if n := countKeys[uint64, uint32](t, w.objs.LvwArmed); n != 1 {
		t.Errorf("lvw_armed holds %d cookies, want the loop device's alone", n)
	}
	if n := countKeys[uint32, uint64](t, w.objs.LvwHigh); n != 0 {
		t.Errorf("lvw_high holds %d entries, want none", n)
	}
	if list, err := w.List(); err != nil || len(list) != 1 || list[0].Dev != dev.Dev {
		t.Errorf("List = %+v, %v; want the loop device alone", list, err)
	}
}
