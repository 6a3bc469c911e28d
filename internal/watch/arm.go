package watch

import (
	"cmp"
	"errors"
	"fmt"
	"slices"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// Armed is what Arm did.
type Armed struct {
	Cookie uint64 // the cookie this arming's event will carry
	// Past means writes had already ended beyond the threshold when Arm ran
	// (while the device was being extended, say): no event will come for this
	// arming, so the caller acts at once, as on an event. The high-water mark
	// records only writes above the gate's bound, so for a threshold below one
	// armed before on the device (since Disarm, or a new device of the number),
	// which writes may have passed unrecorded, Past is said to be safe.
	Past bool
	High uint64 // bytes: the highest write end the program has seen on the device
}

// Arming is one device's entry in the pinned maps, as List reports it.
type Arming struct {
	Dev       Dev
	Threshold uint64 // bytes, rounded down to a sector
	Cookie    uint64
	Armed     bool // false once its crossing fired, or Arm found it already past
	// High is the highest end of a write the program saw on the device (bytes),
	// counting every write that ended above the gate's bound (a 4 KiB lower bound
	// of the threshold) since the device was first armed; 0 if none.
	High    uint64
	DiskSeq uint64 // the device's diskseq when armed; 0 where the kernel has none
}

// Arm makes the next write to dev that ends beyond threshold bytes raise one
// event, replacing any earlier arming of dev; an event of the earlier arming
// that Read has not returned yet is dropped. Arm is all or nothing: on error the
// earlier arming stands as it was. Partitions are refused (ErrPartition).
func (w *Watcher) Arm(dev Dev, threshold uint64) (Armed, error) {
	seq, err := identity(dev)
	if err != nil {
		return Armed{}, err
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return Armed{}, ErrClosed
	}
	k := dev.kernel()
	var old bpfLvwArm
	hadOld := true
	if err := w.objs.LvwWatch.Lookup(k, &old); errors.Is(err, ebpf.ErrKeyNotExist) {
		hadOld = false
	} else if err != nil {
		return Armed{}, fmt.Errorf("arm %s: read lvw_watch: %w", dev, err)
	}
	arm := bpfLvwArm{Threshold: threshold / sectorSize, Cookie: w.cookie + 1, Diskseq: seq}
	arm.Ceiling = arm.Threshold
	unrecorded := false // whether writes past the threshold may have gone unrecorded
	if hadOld && old.Diskseq == seq {
		unrecorded = threshold < gateBound(old.Ceiling*sectorSize)
		arm.Ceiling = max(arm.Ceiling, old.Ceiling)
	} else if err := deleteIfPresent(w.objs.LvwHigh, k); err != nil {
		// A high-water mark left by an earlier device of this number is not dev's.
		return Armed{}, fmt.Errorf("arm %s: reset lvw_high: %w", dev, err)
	}
	if err := w.install(k, hadOld, old, arm); err != nil {
		return Armed{}, fmt.Errorf("arm %s: %w", dev, err)
	}
	w.cookie = arm.Cookie
	w.current[k] = arming{cookie: arm.Cookie, diskseq: seq}
	return w.checkPast(dev, arm, unrecorded), nil
}

// install swaps old for arm in the maps and the gate, undoing every step on error.
// In each state between, the gate's bound is at or below every threshold the
// program can see for k, and lvw_armed has room for what it must hold: the old
// cookie goes before the new one comes.
func (w *Watcher) install(k uint32, hadOld bool, old, arm bpfLvwArm) (err error) {
	owner, prevWord := w.gate.claim(k, arm.Threshold*sectorSize)
	var undo []func() error
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				if uerr := undo[i](); uerr != nil {
					err = errors.Join(err, fmt.Errorf("undo: %w", uerr))
				}
			}
			w.gate.restore(k, prevWord)
		}
	}()
	if hadOld {
		switch err := w.objs.LvwArmed.Delete(old.Cookie); {
		case err == nil:
			undo = append(undo, func() error { return w.objs.LvwArmed.Update(old.Cookie, k, ebpf.UpdateNoExist) })
		case !errors.Is(err, ebpf.ErrKeyNotExist): // else it fired already
			return fmt.Errorf("drop the previous arming: %w", err)
		}
	}
	if err := w.objs.LvwWatch.Update(k, arm, ebpf.UpdateAny); err != nil {
		return mapFull(err)
	}
	undo = append(undo, func() error {
		if hadOld {
			return w.objs.LvwWatch.Update(k, old, ebpf.UpdateExist)
		}
		return w.objs.LvwWatch.Delete(k)
	})
	if err := w.objs.LvwArmed.Update(arm.Cookie, k, ebpf.UpdateNoExist); err != nil {
		return mapFull(err)
	}
	if owner {
		w.gate.set(k, arm.Threshold*sectorSize)
	}
	return nil
}

// checkPast looks at the high-water mark once the new arming is live. If writes
// already went past its threshold (or may have, unrecorded), either the program
// saw one of them after the arming went live (its event is on the way) or none
// came since: then Arm takes the cookie back itself, and whichever deletes it
// first decides, exactly once.
func (w *Watcher) checkPast(dev Dev, arm bpfLvwArm, unrecorded bool) Armed {
	a := Armed{Cookie: arm.Cookie}
	var high uint64
	if err := w.objs.LvwHigh.Lookup(dev.kernel(), &high); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		w.log.Warn().Err(err).Stringer("dev", dev).Msg("cannot read the high-water mark; taking the arming as past")
		unrecorded = true
	}
	a.High = high * sectorSize
	if high <= arm.Threshold && !unrecorded {
		return a
	}
	// Deleting fails only when the program took the cookie first: its event comes.
	a.Past = w.objs.LvwArmed.Delete(arm.Cookie) == nil
	return a
}

func deleteIfPresent(m *ebpf.Map, key any) error {
	if err := m.Delete(key); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return err
	}
	return nil
}

func mapFull(err error) error {
	if errors.Is(err, unix.E2BIG) {
		return fmt.Errorf("more devices than the watcher holds (%d): %w", maxDevices, err)
	}
	return err
}

// maxDevices is LVW_MAX_DEVICES: how many devices the maps hold.
const maxDevices = 4096

// High is the highest end of a write the program saw on dev since it was first
// armed (bytes), 0 if none or dev is not watched: Disarm forgets it.
func (w *Watcher) High(dev Dev) (uint64, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return 0, ErrClosed
	}
	var high uint64
	if err := w.objs.LvwHigh.Lookup(dev.kernel(), &high); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return 0, fmt.Errorf("read lvw_high of %s: %w", dev, err)
	}
	return high * sectorSize, nil
}

// Disarm stops watching dev. It reports whether dev was still armed, that is
// whether no crossing event for its last arming exists or will come.
func (w *Watcher) Disarm(dev Dev) (bool, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return false, ErrClosed
	}
	return w.disarmLocked(dev)
}

func (w *Watcher) disarmLocked(dev Dev) (bool, error) {
	k := dev.kernel()
	var arm bpfLvwArm
	if err := w.objs.LvwWatch.LookupAndDelete(k, &arm); errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, nil
	} else if err != nil {
		return false, fmt.Errorf("disarm %s: %w", dev, err)
	}
	delete(w.current, k)
	err := w.objs.LvwArmed.Delete(arm.Cookie)
	armed := err == nil
	if err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
		return false, fmt.Errorf("disarm %s: %w", dev, err)
	}
	if err := deleteIfPresent(w.objs.LvwHigh, k); err != nil {
		return armed, fmt.Errorf("disarm %s: drop lvw_high: %w", dev, err)
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
		if dev != k && w.gate.index(dev) == w.gate.index(k) {
			return dev, arm.Threshold * sectorSize, nil
		}
	}
	if err := it.Err(); err != nil {
		return 0, 0, fmt.Errorf("read lvw_watch: %w", err)
	}
	return 0, 0, nil
}

// List returns every device in the pinned maps, armed or fired, sorted by
// device number, for an agent to reconcile with the devices it finds (after a
// restart, or when Counters shows Lost events).
func (w *Watcher) List() ([]Arming, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil, ErrClosed
	}
	return w.listLocked()
}

func (w *Watcher) listLocked() ([]Arming, error) {
	var list []Arming
	var k uint32
	var arm bpfLvwArm
	it := w.objs.LvwWatch.Iterate()
	for it.Next(&k, &arm) {
		a := Arming{Dev: devFromKernel(k), Threshold: arm.Threshold * sectorSize, Cookie: arm.Cookie, DiskSeq: arm.Diskseq}
		var dev uint32
		switch err := w.objs.LvwArmed.Lookup(arm.Cookie, &dev); {
		case err == nil:
			a.Armed = true
		case !errors.Is(err, ebpf.ErrKeyNotExist):
			return nil, fmt.Errorf("read lvw_armed: %w", err)
		}
		var high uint64
		if err := w.objs.LvwHigh.Lookup(k, &high); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return nil, fmt.Errorf("read lvw_high: %w", err)
		}
		a.High = high * sectorSize
		list = append(list, a)
	}
	if err := it.Err(); err != nil {
		return nil, fmt.Errorf("read lvw_watch: %w", err)
	}
	slices.SortFunc(list, func(a, b Arming) int {
		return cmp.Or(cmp.Compare(a.Dev.Major, b.Dev.Major), cmp.Compare(a.Dev.Minor, b.Dev.Minor))
	})
	return list, nil
}

// Prune disarms every arming whose device is gone or is another device now
// (dm and loop reuse numbers; the diskseq tells them apart), so that no later
// device inherits an arming that was not meant for it. It returns what it
// disarmed. Open prunes too.
func (w *Watcher) Prune() ([]Arming, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.closed {
		return nil, ErrClosed
	}
	list, err := w.listLocked()
	if err != nil {
		return nil, err
	}
	var pruned []Arming
	for _, a := range list {
		present, seq, err := a.Dev.present()
		if err != nil {
			return pruned, err
		}
		if present && seq == a.DiskSeq {
			continue // the same device
		}
		if _, err := w.disarmLocked(a.Dev); err != nil {
			return pruned, err
		}
		w.log.Info().Stringer("dev", a.Dev).Uint64("diskseq", a.DiskSeq).Uint64("now", seq).Bool("present", present).
			Msg("disarmed a device that is gone or was replaced")
		pruned = append(pruned, a)
	}
	return pruned, nil
}
