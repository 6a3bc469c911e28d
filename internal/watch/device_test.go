package watch

import (
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"

	"github.com/lvwatch/lvwatch/internal/testutil"
	"golang.org/x/sys/unix"
)

const mib = 1 << 20

func TestDeviceCrossings(t *testing.T) {
	w := openWatcher(t)
	dev := newBlockDev(t, "", 64*mib)
	other := newBlockDev(t, "", 64*mib)
	buf := alignedBuf(64 << 10)

	cookie, err := w.Arm(dev.Dev, 16*mib)
	if err != nil {
		t.Fatal(err)
	}
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

	if _, err := w.Arm(dev.Dev, 32*mib); err != nil {
		t.Fatal(err)
	}
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

func TestDeviceRacingWriters(t *testing.T) {
	w := openWatcher(t)
	dev := newBlockDev(t, "", 64*mib)
	const writers = 8
	for round := range 20 {
		if _, err := w.Arm(dev.Dev, 8*mib); err != nil {
			t.Fatal(err)
		}
		var start, done sync.WaitGroup
		start.Add(1)
		for i := range writers {
			done.Add(1)
			go func() {
				defer done.Done()
				buf := alignedBuf(4096)
				start.Wait()
				dev.write(t, buf, 8*mib+int64(i)*4096)
			}()
		}
		start.Done()
		done.Wait()
		if evs := pending(t, w); len(evs) != 1 {
			t.Fatalf("round %d: %d writers crossing together gave %d events, want 1", round, writers, len(evs))
		}
	}
}

func TestDeviceEventsSurviveRestart(t *testing.T) {
	requireBPF(t)
	dev := newBlockDev(t, "", 64*mib)
	opts := Options{PinDir: testPinDir(t)}
	w, err := Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	cookie, err := w.Arm(dev.Dev, mib)
	if err != nil {
		w.CloseAndUnpin()
		t.Fatal(err)
	}
	if _, err := Open(opts); !errors.Is(err, ErrBusy) {
		t.Errorf("second Open = %v, want ErrBusy", err)
	}
	if err := w.Close(); err != nil { // keeps the pins
		t.Fatal(err)
	}

	dev.write(t, alignedBuf(4096), 2*mib) // crosses while no process reads

	w, err = Open(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.CloseAndUnpin() })
	if ev := wantEvents(t, w, 1, "crossing during the restart")[0]; ev.Cookie != cookie {
		t.Errorf("cookie %d, want %d", ev.Cookie, cookie)
	}
	next, err := w.Arm(dev.Dev, 4*mib)
	if err != nil {
		t.Fatal(err)
	}
	if next <= cookie {
		t.Errorf("cookie after restart %d, not above %d", next, cookie)
	}
	dev.write(t, alignedBuf(4096), 4*mib)
	wantEvents(t, w, 1, "crossing after the restart")
}

// bpftool, the operator's view: the pinned maps show their fields by name.
func TestDeviceBpftoolShowsFields(t *testing.T) {
	w := openWatcher(t)
	if _, err := exec.LookPath("bpftool"); err != nil {
		testutil.SkipOrFail(t, "bpftool not installed (make deps installs it)")
	}
	if _, err := w.Arm(fakeDev, 7*mib); err != nil {
		t.Fatal(err)
	}
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
