// Package watch loads, attaches and pins lvwatch's BPF write watcher, arms and
// disarms per-device thresholds, and delivers the crossing events.
package watch

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/rs/zerolog"
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
	// ErrClosed is returned by every method called after Close.
	ErrClosed = errors.New("watcher closed")
)

// Options configures Open. The zero value is ready to use.
type Options struct {
	PinDir string // default DefaultPinDir
	Logger zerolog.Logger
	// Probe forces one way of attaching; by default (ProbeAuto) the BTF raw
	// tracepoint where the kernel has BTF, else the classic tracepoint.
	Probe Probe
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

// Counters are the program's statistics summed over CPUs since the pins were made,
// and what this Watcher's Read dropped.
type Counters struct {
	Bios      uint64 // bios of any kind on watched devices
	Crossings uint64 // events emitted
	Lost      uint64 // crossings that found the ring full; the device stayed armed
	Stale     uint64 // events Read dropped: their device was armed anew or disarmed since
}

// objects are the parts of the BPF collection the watcher uses: every map, and
// the program of its probe.
type objects struct {
	bpfMaps
	Prog *ebpf.Program
}

// Watcher owns the loaded watcher. Every method may be called from any
// goroutine, Read from one at a time; after Close they return ErrClosed.
type Watcher struct {
	objs   objects
	link   link.Link
	events *ringbuf.Reader
	gate   *gate
	lock   *os.File // the pin directory, flocked while this Watcher lives
	pinDir string
	probe  Probe
	log    zerolog.Logger

	// mu serialises the map updates of Arm and Disarm, which go together, and
	// keeps Close from unmapping the gate under them.
	mu      sync.Mutex
	closed  bool
	cookie  uint64            // the last cookie handed out
	current map[uint32]arming // dev_t → its arming, as in lvw_watch
	stale   uint64            // events Read dropped
}

// arming is what Read checks an event against.
type arming struct{ cookie, diskseq uint64 }

// Open loads the watcher, reusing pinned maps so that crossings that happened while
// no process was reading are delivered, and attaches a fresh program before the old
// link is dropped, so that no write goes unseen across a restart, whichever probe
// the old link used. Only one process may hold the watcher at a time: a second
// gets ErrBusy.
func Open(opts Options) (_ *Watcher, err error) {
	if opts.PinDir == "" {
		opts.PinDir = DefaultPinDir
	}
	switch opts.Probe {
	case ProbeAuto, ProbeBTF, ProbeTracepoint:
	default:
		return nil, fmt.Errorf("unknown probe %q (want %q or %q)", opts.Probe, ProbeBTF, ProbeTracepoint)
	}
	w := &Watcher{pinDir: opts.PinDir, log: opts.Logger, current: map[uint32]arming{}}
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
	err = spec.LoadAndAssign(&w.objs.bpfMaps, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: w.pinDir}})
	if errors.Is(err, ebpf.ErrMapIncompatible) {
		return nil, fmt.Errorf("maps pinned in %s are from an incompatible lvwatch (remove the directory to start afresh, losing undelivered events): %w", w.pinDir, err)
	}
	if err != nil {
		return nil, fmt.Errorf("load BPF maps: %w", err)
	}
	if w.gate, err = mapGate(w.objs.LvwGate); err != nil {
		return nil, err
	}
	last, err := w.loadArmings()
	if err != nil {
		return nil, err
	}
	// The gate is rebuilt before the new program runs, so that it sees every
	// watched device from its first bio.
	if err := w.attachProbe(spec, opts.Probe); err != nil {
		return nil, err
	}
	if w.events, err = ringbuf.NewReader(w.objs.LvwEvents); err != nil {
		return nil, fmt.Errorf("open event ring: %w", err)
	}
	if _, err := w.Prune(); err != nil {
		return nil, err
	}
	// Events still in the ring may carry cookies no map holds any more; starting
	// from the wall clock's nanoseconds keeps new cookies above those too.
	w.cookie = max(last, uint64(time.Now().UnixNano()))
	return w, nil
}

// Probe reports how the watcher's program is attached.
func (w *Watcher) Probe() Probe { return w.probe }

func (w *Watcher) lockPinDir() error {
	if err := os.MkdirAll(w.pinDir, 0o700); err != nil {
		return fmt.Errorf("create pin directory: %w", err)
	}
	f, err := tryLock(w.pinDir)
	if err != nil {
		return err
	}
	w.lock = f
	return nil
}

// loadArmings reads the pinned armings into current, rebuilds the gate from
// them, drops what a process that died mid-Disarm left in lvw_armed and
// lvw_high, and returns the highest cookie in the maps, so that new cookies
// never repeat one that is still armed.
func (w *Watcher) loadArmings() (uint64, error) {
	var last uint64
	var dev uint32
	var arm bpfLvwArm
	thresholds := map[uint32]uint64{}
	it := w.objs.LvwWatch.Iterate()
	for it.Next(&dev, &arm) {
		last = max(last, arm.Cookie)
		w.current[dev] = arming{cookie: arm.Cookie, diskseq: arm.Diskseq}
		thresholds[dev] = arm.Threshold * sectorSize
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("read lvw_watch: %w", err)
	}
	w.gate.rebuild(thresholds)

	var cookie, high uint64
	var orphans []uint64
	it = w.objs.LvwArmed.Iterate()
	for it.Next(&cookie, &dev) {
		last = max(last, cookie)
		if w.current[dev].cookie != cookie {
			orphans = append(orphans, cookie)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("read lvw_armed: %w", err)
	}
	for _, c := range orphans {
		if err := deleteIfPresent(w.objs.LvwArmed, c); err != nil {
			return 0, fmt.Errorf("drop an orphaned cookie from lvw_armed: %w", err)
		}
	}
	var unwatched []uint32
	it = w.objs.LvwHigh.Iterate()
	for it.Next(&dev, &high) {
		if _, ok := w.current[dev]; !ok {
			unwatched = append(unwatched, dev)
		}
	}
	if err := it.Err(); err != nil {
		return 0, fmt.Errorf("read lvw_high: %w", err)
	}
	for _, d := range unwatched {
		if err := deleteIfPresent(w.objs.LvwHigh, d); err != nil {
			return 0, fmt.Errorf("drop an orphaned entry from lvw_high: %w", err)
		}
	}
	return last, nil
}

// Read blocks until the next crossing of a current arming and returns it. An
// event whose arming was replaced by a later Arm, or removed by Disarm, is
// dropped (and counted as Stale): the new arming answers for the device, with
// Arm's Past for writes that went beyond it meanwhile. When ctx ends Read returns
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
			ev, err := decodeEvent(rec.RawSample, monotonicNow())
			if err != nil {
				return Event{}, err
			}
			if current, err := w.isCurrent(ev); err != nil || current {
				return ev, err
			}
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

// isCurrent reports whether ev's arming is still dev's, and dev the device it
// was armed on (a dm or loop number may have gone to another disk since),
// counting it stale if not.
func (w *Watcher) isCurrent(ev Event) (bool, error) {
	w.mu.Lock()
	a, ok := w.current[ev.Dev.kernel()]
	closed := w.closed
	w.mu.Unlock()
	if closed {
		return false, ErrClosed
	}
	current := ok && a.cookie == ev.Cookie
	if current && a.diskseq != 0 {
		present, seq, err := ev.Dev.present()
		if err != nil {
			return false, err
		}
		if current = present && seq == a.diskseq; !current {
			w.log.Info().Stringer("dev", ev.Dev).Uint64("diskseq", a.diskseq).Uint64("now", seq).
				Msg("dropped the event of a device number that went to another disk")
		}
	}
	if !current {
		w.mu.Lock()
		w.stale++
		w.mu.Unlock()
		w.log.Debug().Stringer("dev", ev.Dev).Uint64("cookie", ev.Cookie).Msg("dropped the event of an arming since replaced")
	}
	return current, nil
}

// Counters sums the per-CPU counters.
func (w *Watcher) Counters() (Counters, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return Counters{}, ErrClosed
	}
	c := Counters{Stale: w.stale}
	var perCPU []bpfLvwCounters
	if err := w.objs.LvwStats.Lookup(uint32(0), &perCPU); err != nil {
		return Counters{}, fmt.Errorf("read lvw_stats: %w", err)
	}
	for _, p := range perCPU {
		c.Bios += p.Bios
		c.Crossings += p.Crossings
		c.Lost += p.Lost
	}
	return c, nil
}

// Close releases the watcher and keeps the pins: the program stays attached and the
// next Open delivers what crossed in between. It waits for an Arm or Disarm under
// way; a second Close returns ErrClosed.
func (w *Watcher) Close() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.closeLocked(false)
}

// CloseAndUnpin detaches the program, removes the pins and closes the watcher.
func (w *Watcher) CloseAndUnpin() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.closeLocked(true)
}

func (w *Watcher) closeLocked(unpin bool) error {
	if w.closed {
		return ErrClosed
	}
	w.closed = true
	var errs []error
	if unpin {
		if w.link != nil {
			errs = append(errs, w.link.Unpin())
		}
		for _, m := range w.objs.byName() {
			if m != nil {
				errs = append(errs, m.Unpin())
			}
		}
	}
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
	if unpin {
		errs = append(errs, os.Remove(w.pinDir))
	}
	return errors.Join(errs...)
}

// byName maps each map's name in bpf/lvwatch.c to it: every map, for unpinning and for
// loading a program on them.
func (o *objects) byName() map[string]*ebpf.Map {
	m := &o.bpfMaps
	return map[string]*ebpf.Map{
		bpfMapLvwWatch: m.LvwWatch, bpfMapLvwArmed: m.LvwArmed, bpfMapLvwHigh: m.LvwHigh,
		bpfMapLvwEvents: m.LvwEvents, bpfMapLvwStats: m.LvwStats, bpfMapLvwGate: m.LvwGate,
	}
}
