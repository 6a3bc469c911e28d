//go:build vmtest

// Package lvtest runs the watcher on real device-mapper LVs, in the vmtest
// guest: the package's own tests use loop devices, which the guest has too,
// but only dm shows what a VM's disk looks like to the block layer (an LV's
// bios traced for the LV, at LV sectors, then for the PV below).
package lvtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/lvwatch/lvwatch/internal/blockdev"
	"github.com/lvwatch/lvwatch/internal/dm/dmtest"
	"github.com/lvwatch/lvwatch/internal/lvm"
	"github.com/lvwatch/lvwatch/internal/lvm/lvmtest"
	"github.com/lvwatch/lvwatch/internal/watch"
)

const mib = 1 << 20

// activation turns on what lvmtest's configuration turns off: the LVs here are
// active in device-mapper, as on the host that runs the VM.
var activation = []string{"--config", "global/activation=1"}

var vgSeq atomic.Int32

// lv is an active linear LV on loop devices, opened for O_DIRECT writes.
type lv struct {
	env  *lvmtest.Env
	name string // VG/LV
	path string
	dev  watch.Dev
	fd   int
	buf  []byte // 64 KiB, page-aligned for O_DIRECT; one writer at a time
}

func newLV(t *testing.T, size string) *lv {
	t.Helper()
	dmtest.Control(t)
	env := lvmtest.New(t, 1, 256*mib)
	vg := fmt.Sprintf("lvwatch_watch_%d_%d", os.Getpid(), vgSeq.Add(1))
	env.CreateVG(vg, env.Paths(), nil, []string{"--physicalextentsize", "1m"})
	env.MustRun(append(append([]string{"lvcreate"}, activation...), "-q", "-n", "disk", "-L", size, "-Wn", "-Zn", vg)...)
	l := &lv{env: env, name: vg + "/disk", path: filepath.Join("/dev/mapper", lvm.DMName(vg, "disk"))}
	t.Cleanup(func() {
		if l.fd > 0 {
			unix.Close(l.fd)
		}
		env.Run(append(append([]string{"vgchange"}, activation...), "-an", vg)...)
	})
	var err error
	if l.dev, err = watch.DevOf(l.path); err != nil {
		t.Fatal(err)
	}
	if l.fd, err = unix.Open(l.path, unix.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0); err != nil {
		t.Fatal(err)
	}
	if l.buf, err = unix.Mmap(-1, 0, 64<<10, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(l.buf) })
	return l
}

// write writes 64 KiB at offset with O_DIRECT.
func (l *lv) write(offset int64) error {
	_, err := unix.Pwrite(l.fd, l.buf, offset)
	return err
}

func (l *lv) size(t *testing.T) uint64 {
	t.Helper()
	n, err := blockdev.Size(l.path)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// probes are the watcher's two ways of attaching, each forced in turn: the
// guest's 6.1 kernel has BTF, so both run there.
var probes = []watch.Probe{watch.ProbeBTF, watch.ProbeTracepoint}

// eachProbe runs test once per probe, as a subtest named after it.
func eachProbe(t *testing.T, test func(t *testing.T, probe watch.Probe)) {
	for _, probe := range probes {
		t.Run(string(probe), func(t *testing.T) { test(t, probe) })
	}
}

func openWatcher(t *testing.T, probe watch.Probe) *watch.Watcher {
	t.Helper()
	dir := fmt.Sprintf("/sys/fs/bpf/lvwatch-lvtest-%d-%s-%s", os.Getpid(), strings.ReplaceAll(t.Name(), "/", "-"), probe)
	w, err := watch.Open(watch.Options{PinDir: dir, Probe: probe})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { w.CloseAndUnpin() })
	if w.Probe() != probe {
		t.Fatalf("watcher attached by %s, want %s", w.Probe(), probe)
	}
	return w
}

// next waits for the next event, up to d.
func next(t *testing.T, w *watch.Watcher, d time.Duration) (watch.Event, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	return w.Read(ctx)
}

// A write to an LV raises its event with the LV's dev_t and the offset in the
// LV, whatever PV and sector the table maps it to.
func TestLVCrossing(t *testing.T) { eachProbe(t, testLVCrossing) }

func testLVCrossing(t *testing.T, probe watch.Probe) {
	w := openWatcher(t, probe)
	l := newLV(t, "64m")
	a, err := w.Arm(l.dev, 32*mib)
	if err != nil || a.Past {
		t.Fatalf("Arm = %+v, %v", a, err)
	}
	if err := l.write(32*mib - 32<<10); err != nil { // ends 32 KiB past
		t.Fatal(err)
	}
	ev, err := next(t, w, 10*time.Second)
	if err != nil {
		t.Fatalf("no event: %v", err)
	}
	if ev.Dev != l.dev || ev.Offset != 32*mib-32<<10 || ev.Length != 64<<10 || ev.Cookie != a.Cookie {
		t.Errorf("event %+v, want dev %s at LV offset %d, 64 KiB, cookie %d", ev, l.dev, 32*mib-32<<10, a.Cookie)
	}
	if ev, err := next(t, w, 500*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("a second event %+v (%v) for one crossing", ev, err)
	}
}

// Both probes, attached at once, see an LV's bios alike: the LV's own (dm-N,
// LV sectors) and the PV's below (the loop device, PV sectors), the same
// operations counted as writes, the same bios and high-water marks.
func TestLVProbesAgree(t *testing.T) {
	watchers := map[watch.Probe]*watch.Watcher{}
	for _, probe := range probes {
		watchers[probe] = openWatcher(t, probe)
	}
	l := newLV(t, "64m")
	pv, err := watch.DevOf(l.env.Paths()[0])
	if err != nil {
		t.Fatal(err)
	}
	events := map[watch.Probe][]watch.Event{}
	// arm arms each watcher's devices at their thresholds (bytes), after
	// reading the crossings of the armings before.
	arm := func(thresholds map[watch.Dev]uint64) {
		t.Helper()
		for probe, w := range watchers {
			events[probe] = append(events[probe], drain(t, w)...)
			for dev, threshold := range thresholds {
				if a, err := w.Arm(dev, threshold); err != nil || a.Past {
					t.Fatalf("%s: Arm(%s, %d) = %+v, %v", probe, dev, threshold, a, err)
				}
			}
		}
	}
	arm(map[watch.Dev]uint64{l.dev: 16 * mib, pv: 0})
	if err := l.write(0); err != nil { // below the LV's threshold; the PV's first write crosses
		t.Fatal(err)
	}
	if _, err := unix.Pread(l.fd, l.buf, 32*mib); err != nil {
		t.Fatal(err)
	}
	l.rangeIoctl(t, unix.BLKDISCARD, 32*mib, mib)
	l.rangeIoctl(t, unix.BLKZEROOUT, 20*mib, mib) // crosses
	arm(map[watch.Dev]uint64{l.dev: 24 * mib})
	if err := unix.Fsync(l.fd); err != nil {
		t.Fatal(err)
	}
	if err := l.write(24*mib - 4096); err != nil { // crosses
		t.Fatal(err)
	}
	arm(nil)

	type seen struct {
		Events []watch.Event
		Bios   uint64
		List   []watch.Arming
	}
	got := map[watch.Probe]seen{}
	for probe, w := range watchers {
		s := seen{}
		for _, ev := range events[probe] {
			ev.Cookie, ev.Queued, ev.Latency = 0, 0, 0 // each watcher's own
			s.Events = append(s.Events, ev)
		}
		if len(s.Events) != 3 {
			t.Errorf("%s: %d events, want 3 (the PV's first write, two on the LV): %+v", probe, len(s.Events), s.Events)
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
		got[probe] = s
	}
	t.Logf("each saw %+v", got[watch.ProbeBTF])
	if !reflect.DeepEqual(got[watch.ProbeBTF], got[watch.ProbeTracepoint]) {
		t.Errorf("the probes disagree:\n%s: %+v\n%s: %+v", watch.ProbeBTF, got[watch.ProbeBTF], watch.ProbeTracepoint, got[watch.ProbeTracepoint])
	}
}

// drain returns the events already in w's ring.
func drain(t *testing.T, w *watch.Watcher) []watch.Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var evs []watch.Event
	for {
		ev, err := w.Read(ctx)
		if errors.Is(err, context.Canceled) {
			return evs
		}
		if err != nil {
			t.Fatal(err)
		}
		evs = append(evs, ev)
	}
}

// rangeIoctl issues BLKDISCARD or BLKZEROOUT for [offset, offset+length) of the LV.
func (l *lv) rangeIoctl(t *testing.T, req uint, offset, length uint64) {
	t.Helper()
	r := [2]uint64{offset, length}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(l.fd), uintptr(req), uintptr(unsafe.Pointer(&r[0]))); errno != 0 {
		t.Fatalf("ioctl %#x on %s: %v", req, l.path, errno)
	}
}

// The agent's loop on a real LV under a steady writer: arm half a chunk before
// the end, extend the LV by a chunk with lvextend (a table reload: suspend,
// resume) while armed and written, wait for the crossing, go on a chunk. Every
// arming ends exactly once, in an event or in Arm's Past, with the LV's dev_t
// and LV offsets, and the writer, held at the end at times, finishes.
func TestLVExtendedUnderWrites(t *testing.T) { eachProbe(t, testLVExtendedUnderWrites) }

func testLVExtendedUnderWrites(t *testing.T, probe watch.Probe) {
	const chunk, final = 8 * mib, 64 * mib
	w := openWatcher(t, probe)
	l := newLV(t, "16m")

	writerDone := make(chan error, 1)
	var retries atomic.Int64
	go func() {
		for off := int64(0); off < final; {
			err := l.write(off)
			switch {
			case err == nil:
				off += 64 << 10
			case errors.Is(err, unix.ENOSPC), errors.Is(err, unix.EIO):
				retries.Add(1) // past the end: wait for the extension
				time.Sleep(time.Millisecond)
			default:
				writerDone <- fmt.Errorf("write at %d: %w", off, err)
				return
			}
		}
		writerDone <- nil
	}()

	// Each arming is refreshed over (lvextend suspends and resumes the LV with
	// its new table) while armed and written.
	size := l.size(t)
	threshold := size - chunk/2
	events, pasts := 0, 0
	for size < final {
		a, err := w.Arm(l.dev, threshold)
		if err != nil {
			t.Fatal(err)
		}
		l.env.MustRun(append(append([]string{"lvextend"}, activation...), "-q", "-L", fmt.Sprintf("+%dm", chunk/mib), l.name)...)
		if got := l.size(t); got != size+chunk {
			t.Fatalf("size %d after lvextend, want %d", got, size+chunk)
		}
		if !a.Past {
			ev, err := next(t, w, 30*time.Second)
			if err != nil {
				t.Fatalf("no event for the arming at %d: %v", threshold, err)
			}
			if ev.Dev != l.dev || ev.Cookie != a.Cookie || ev.Offset+ev.Length <= threshold || ev.Offset >= size+chunk {
				t.Fatalf("event %+v for the arming at %d (cookie %d) of an LV of %d", ev, threshold, a.Cookie, size+chunk)
			}
			events++
		} else if a.High <= threshold {
			t.Fatalf("Arm at %d: Past with high-water mark %d", threshold, a.High)
		} else {
			pasts++
		}
		size += chunk
		threshold += chunk
	}
	if err := <-writerDone; err != nil {
		t.Fatal(err)
	}
	// The last arming lies past the end of all writes: nothing more may come.
	if a, err := w.Arm(l.dev, final); err != nil || a.Past {
		t.Fatalf("Arm at the end = %+v, %v", a, err)
	}
	if ev, err := next(t, w, 500*time.Millisecond); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("an event %+v (%v) after the last crossing", ev, err)
	}
	t.Logf("%d events and %d armings already past, one each; the writer waited at the end %d times", events, pasts, retries.Load())
}
