// Package watch loads, attaches and pins lvwatch's BPF write watcher, arms and
// disarms per-device thresholds, and delivers the crossing events.
package watch

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// DefaultPinDir is where the maps and the link are pinned, for bpftool and for the
// next agent after a restart.
const DefaultPinDir = bpfFSPath + "/lvwatch"

const (
	sectorSize = 512
	linkPin    = "lvw_link"
)

var (
	// ErrBusy means another process holds the watcher.
	ErrBusy = errors.New("another lvwatch process is reading the events")
	// ErrClosed is returned by Read after Close.
	ErrClosed = errors.New("watcher closed")
)

// Options configures Open. The zero value is ready to use.
type Options struct {
	PinDir string // default DefaultPinDir
	Logger zerolog.Logger
}

// Event is one threshold crossing.
type Event struct {
	Dev       Dev
	Cookie    uint64 // the Arm call's cookie this crossing disarmed
	Offset    uint64 // bytes: where the crossing write starts
	Length    uint64 // bytes
	Threshold uint64 // bytes, rounded down to a sector as armed
	PID, TID  uint32
	Comm      string
	// Queued is CLOCK_MONOTONIC when the write was queued; Latency runs from
	// then until Read decoded the event.
	Queued  time.Duration
	Latency time.Duration
}

// Counters are the program's statistics summed over CPUs since the pins were made.
type Counters struct {
	Bios      uint64 // bios of any kind on watched devices
	Crossings uint64 // events emitted
	Lost      uint64 // crossings that found the ring full; the device stayed armed
}

// objects are the parts of the BPF collection the watcher uses: every map, and
// the program without its test twin.
type objects struct {
	bpfMaps
	Prog *ebpf.Program `ebpf:"lvw_bio_queue"`
}

// Watcher owns the loaded watcher. Arm, Disarm and Counters may be called from
// any goroutine; Read from one at a time.
type Watcher struct {
	objs   objects
	link   link.Link
	events *ringbuf.Reader
	gate   *gate
	lock   *os.File // the pin directory, flocked while this Watcher lives
	pinDir string
	mu     sync.Mutex // serialises Arm and Disarm, whose map updates go together
	cookie uint64     // the last cookie handed out
	log    zerolog.Logger
}

// Open loads the watcher, reusing pinned maps so that crossings that happened while
// no process was reading are delivered, and attaches a fresh program before the old
// link is dropped, so that no write goes unseen across a restart. Only one process
// may hold the watcher at a time: a second gets ErrBusy.
func Open(opts Options) (_ *Watcher, err error) {
	if opts.PinDir == "" {
		opts.PinDir = DefaultPinDir
	}
	w := &Watcher{pinDir: opts.PinDir, log: opts.Logger}
	defer func() {
		if err != nil {
			w.Close()
		}
	}()
	if err := ensureFilesystems(); err != nil {
		return nil, err
	}
	if err := w.lockPinDir(); err != nil {
		return nil, err
	}
	spec, err := loadBpf()
	if err != nil {
		return nil, fmt.Errorf("load BPF spec: %w", err)
	}
	err = spec.LoadAndAssign(&w.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: w.pinDir}})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return nil, fmt.Errorf("maps pinned in %s are from an incompatible lvwatch (remove the directory to start afresh, losing undelivered events): %w", w.pinDir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("load BPF objects: %w", err)
	}
	if err := w.attach(); err != nil {
		return nil, err
	}
	if w.gate, err = mapGate(w.objs.LvwGate); err != nil {
		return nil, err
	}
	if w.events, err = ringbuf.NewReader(w.objs.LvwEvents); err != nil {
		return nil, fmt.Errorf("open event ring: %w", err)
	}
	last, err := w.lastCookie()
	if err != nil {
		return nil, err
	}
	// Events still in the ring may carry cookies no map holds any more; starting
	// from the wall clock's nanoseconds keeps new cookies above those too.
	w.cookie = max(last, uint64(time.Now().UnixNano()))
	return w, nil
}

func (w *Watcher) lockPinDir() error {
	if err := os.MkdirAll(w.pinDir, 0o700); err != nil {
		return fmt.Errorf("create pin directory: %w", err)
	}
	f, err := os.Open(w.pinDir)
	if err != nil {
		return fmt.Errorf("open pin directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fmt.Errorf("%w (%s is locked)", ErrBusy, w.pinDir)
		}
		return fmt.Errorf("lock pin directory: %w", err)
	}
	w.lock = f
	return nil
}

// attach attaches the program and moves the link pin to it. The old link, if any,
// is detached only once the new one is attached: for that instant both run, and
// the disarm in lvw_armed keeps it at one event per crossing.
func (w *Watcher) attach() error {
	l, err := link.Tracepoint("block", "block_bio_queue", w.objs.Prog, nil)
	if err != nil {
		return fmt.Errorf("attach to tracepoint block:block_bio_queue: %w", err)
	}
	w.link = l
	path := filepath.Join(w.pinDir, linkPin)
	if old, err := link.LoadPinnedLink(path, nil); err == nil {
		if err := old.Unpin(); err != nil {
			old.Close()
			return fmt.Errorf("unpin previous link: %w", err)
		}
		old.Close()
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("load pinned link %s: %w", path, err)
	}
	if err := l.Pin(path); err != nil {
		// Kernels before 5.15 attach tracepoints without a pinnable link: the
		// program then stays attached only while this process runs.
		w.log.Warn().Err(err).Str("path", path).Msg("cannot pin the tracepoint link; writes are unwatched while no agent runs")
	}
	return nil
}

// lastCookie finds the highest cookie in the pinned maps, so that new cookies
// never repeat one that is still armed.
func (w *Watcher) lastCookie() (uint64, error) {
	var last uint64
	var dev uint32
	var arm bpfLvwArm
	it := w.objs.LvwWatch.Iterate()
	for it.Next(&dev, &arm) {
		last = max(last, arm.Cookie)
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("read lvw_watch: %w", err)
	}
	var cookie uint64
	it = w.objs.LvwArmed.Iterate()
	for it.Next(&cookie, &dev) {
		last = max(last, cookie)
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("read lvw_armed: %w", err)
	}
	return last, nil
}

// Arm makes the next write to dev that ends beyond threshold bytes raise one event,
// replacing any earlier arming of dev. It returns the cookie that event will carry.
func (w *Watcher) Arm(dev Dev, threshold uint64) (uint64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	k := dev.kernel()
	var old bpfLvwArm
	hadOld := w.objs.LvwWatch.Lookup(k, &old) == nil

	w.cookie++
	cookie := w.cookie
	// Gate, then cookie, then threshold: in every state between, the gate's bound
	// is at or below every threshold the program can see for k.
	owner := w.gate.claim(k, threshold)
	if err := w.objs.LvwArmed.Update(cookie, k, ebpf.UpdateNoExist); err != nil {
		return 0, fmt.Errorf("arm %s: %w", dev, mapFull(err))
	}
	arm := bpfLvwArm{Threshold: threshold / sectorSize, Cookie: cookie}
	if err := w.objs.LvwWatch.Update(k, arm, ebpf.UpdateAny); err != nil {
		w.objs.LvwArmed.Delete(cookie)
		return 0, fmt.Errorf("arm %s: %w", dev, mapFull(err))
	}
	if owner {
		w.gate.set(k, threshold)
	}
	if hadOld {
		if err := w.objs.LvwArmed.Delete(old.Cookie); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return 0, fmt.Errorf("drop the previous arming of %s: %w", dev, err)
		}
	}
	return cookie, nil
}

func mapFull(err error) error {
	if errors.Is(err, unix.E2BIG) {
		return fmt.Errorf("more devices than the watcher holds: %w", err)
	}
	return err
}

// Disarm stops watching dev. It reports whether dev was still armed, that is
// whether no crossing event for its last arming exists or will come.
func (w *Watcher) Disarm(dev Dev) (bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	k := dev.kernel()
	var arm bpfLvwArm
	if err := w.objs.LvwWatch.LookupAndDelete(k, &arm); errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("disarm %s: %w", dev, err)
	}
	err := w.objs.LvwArmed.Delete(arm.Cookie)
	armed := err == nil
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, fmt.Errorf("disarm %s: %w", dev, err)
	}
	if w.gate.owns(k) {
		// The slot may be emptied only if no watched device hashes to it.
		next, threshold, err := w.sharingSlot(k)
		if err != nil {
			return armed, fmt.Errorf("disarm %s: %w", dev, err)
		}
		w.gate.handOver(k, next, threshold)
	}
	return armed, nil
}

// sharingSlot finds a watched device other than k that hashes to k's gate slot,
// with its threshold in bytes, or 0.
func (w *Watcher) sharingSlot(k uint32) (uint32, uint64, error) {
	var dev uint32
	var arm bpfLvwArm
	it := w.objs.LvwWatch.Iterate()
	for it.Next(&dev, &arm) {
		if dev != k && w.gate.slotOf(dev) == w.gate.slotOf(k) {
			return dev, arm.Threshold * sectorSize, nil
		}
	}
	if err := it.Err(); err != nil {
		return 0, 0, fmt.Errorf("read lvw_watch: %w", err)
	}
	return 0, 0, nil
}

// Read blocks until the next crossing and returns it. When ctx ends it returns
// ctx.Err(), but only once every event already in the ring has been returned.
// After Close it returns ErrClosed.
func (w *Watcher) Read(ctx context.Context) (Event, error) {
	// Flush wakes a blocked read; the ring then yields what it holds, then ErrFlushed.
	stop := context.AfterFunc(ctx, func() { w.events.Flush() })
	defer stop()
	for {
		rec, err := w.events.Read()
		switch {
		case err == nil:
			return decodeEvent(rec.RawSample, monotonicNow())
		case errors.Is(err, ringbuf.ErrFlushed):
			if ctx.Err() != nil {
				return Event{}, ctx.Err()
			}
		case errors.Is(err, ringbuf.ErrClosed):
			return Event{}, ErrClosed
		default:
			return Event{}, fmt.Errorf("read event ring: %w", err)
		}
	}
}

func monotonicNow() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) // cannot fail for this clock
	return time.Duration(ts.Nano())
}

// eventSize is sizeof(struct lvw_event).
const eventSize = 4*8 + 4*4 + 16

func decodeEvent(b []byte, now time.Duration) (Event, error) {
	if len(b) < eventSize {
		return Event{}, fmt.Errorf("short event: %d bytes, want %d", len(b), eventSize)
	}
	le := binary.LittleEndian // bpfel: the generated objects are little-endian only
	ev := Event{
		Cookie:    le.Uint64(b[0:]),
		Offset:    le.Uint64(b[8:]) * sectorSize,
		Threshold: le.Uint64(b[16:]) * sectorSize,
		Queued:    time.Duration(le.Uint64(b[24:])),
		Dev:       devFromKernel(le.Uint32(b[32:])),
		Length:    uint64(le.Uint32(b[36:])) * sectorSize,
		PID:       le.Uint32(b[40:]),
		TID:       le.Uint32(b[44:]),
		Comm:      unix.ByteSliceToString(b[48:64]),
	}
	ev.Latency = now - ev.Queued
	return ev, nil
}

// Counters sums the per-CPU counters.
func (w *Watcher) Counters() (Counters, error) {
	var perCPU []bpfLvwCounters
	if err := w.objs.LvwStats.Lookup(uint32(0), &perCPU); err != nil {
		return Counters{}, fmt.Errorf("read lvw_stats: %w", err)
	}
	var c Counters
	for _, p := range perCPU {
		c.Bios += p.Bios
		c.Crossings += p.Crossings
		c.Lost += p.Lost
	}
	return c, nil
}

// Close releases the watcher and keeps the pins: the program stays attached and the
// next Open delivers what crossed in between.
func (w *Watcher) Close() error {
	var errs []error
	if w.events != nil {
		errs = append(errs, w.events.Close())
	}
	if w.link != nil {
		errs = append(errs, w.link.Close())
	}
	// Close is nil-safe on programs and maps, so a half-done Open cleans up here too.
	errs = append(errs, w.objs.Prog.Close(), w.objs.bpfMaps.Close(), w.gate.close())
	if w.lock != nil {
		errs = append(errs, w.lock.Close()) // closing drops the flock
	}
	return errors.Join(errs...)
}

// CloseAndUnpin detaches the program, removes the pins and closes the watcher.
func (w *Watcher) CloseAndUnpin() error {
	var errs []error
	if w.link != nil {
		errs = append(errs, w.link.Unpin())
	}
	for _, m := range []*ebpf.Map{w.objs.LvwWatch, w.objs.LvwArmed, w.objs.LvwEvents, w.objs.LvwStats, w.objs.LvwGate} {
		if m != nil {
			errs = append(errs, m.Unpin())
		}
	}
	errs = append(errs, w.Close(), os.Remove(w.pinDir))
	return errors.Join(errs...)
}
