package watch

import (
	"fmt"
	"math"
	"sync/atomic"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// gate is lvw_gate mapped into this process: one 64-bit word per slot, the
// slot's device (low half) and a lower bound of its threshold in 4 KiB units
// (high half), each stored whole so the program never sees half an update.
type gate struct {
	mem   []byte
	slots uint32
}

const gateUnit = 4096 // bytes per bound unit

func mapGate(m *ebpf.Map) (*gate, error) {
	mem, err := unix.Mmap(m.FD(), 0, int(m.MaxEntries())*8, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap lvw_gate: %w", err)
	}
	return &gate{mem: mem, slots: m.MaxEntries()}, nil
}

func (g *gate) close() error {
	if g == nil {
		return nil
	}
	return unix.Munmap(g.mem)
}

// slotOf is the program's fold of a kernel dev_t.
func (g *gate) slotOf(k uint32) *uint64 { return g.slot(g.index(k)) }

func (g *gate) index(k uint32) uint32 { return (k ^ k>>12) % g.slots }

func (g *gate) slot(i uint32) *uint64 { return (*uint64)(unsafe.Pointer(&g.mem[i*8])) }

// gateBound is the bound the gate holds for threshold, in bytes.
func gateBound(threshold uint64) uint64 { return threshold / gateUnit * gateUnit }

func gateWord(k uint32, threshold uint64) uint64 {
	return uint64(k) | min(threshold/gateUnit, math.MaxUint32)<<32
}

func wordDev(w uint64) uint32 { return uint32(w) }

// claim makes k the owner of its slot, if the slot is free or k's already, with
// a bound no higher than threshold nor than the bound k had. It reports whether
// k owns the slot (a device that does not owns none and its bios take the exact
// path through lvw_watch) and the slot's word before, for restore.
func (g *gate) claim(k uint32, threshold uint64) (owner bool, prev uint64) {
	slot := g.slotOf(k)
	prev = atomic.LoadUint64(slot)
	if prev != 0 && wordDev(prev) != k {
		return false, prev
	}
	word := gateWord(k, threshold)
	if prev != 0 {
		word = min(word, prev) // same device: the lower bound wins
	}
	atomic.StoreUint64(slot, word)
	return true, prev
}

// restore puts back the word claim found in k's slot, undoing a claim.
func (g *gate) restore(k uint32, prev uint64) { atomic.StoreUint64(g.slotOf(k), prev) }

// set stores k's bound once lvw_watch holds threshold for k.
func (g *gate) set(k uint32, threshold uint64) {
	atomic.StoreUint64(g.slotOf(k), gateWord(k, threshold))
}

// owns reports whether k holds its slot.
func (g *gate) owns(k uint32) bool { return wordDev(atomic.LoadUint64(g.slotOf(k))) == k }

// handOver gives k's slot to dev with threshold, or empties it when dev is 0.
func (g *gate) handOver(k, dev uint32, threshold uint64) {
	var word uint64
	if dev != 0 {
		word = gateWord(dev, threshold)
	}
	atomic.StoreUint64(g.slotOf(k), word)
}

// rebuild derives every slot from the armings in lvw_watch (device → threshold in
// bytes): the gate is derived state, and a pin that went missing, or one left by
// a process that died mid-update, must not hide a watched device. Each store
// leaves a valid gate, so the program may run meanwhile.
func (g *gate) rebuild(thresholds map[uint32]uint64) {
	words := make([]uint64, g.slots)
	for k, threshold := range thresholds {
		i := g.index(k)
		if words[i] == 0 || wordDev(words[i]) > k { // the lowest dev_t owns: the same choice every time
			words[i] = gateWord(k, threshold)
		}
	}
	for i, word := range words {
		atomic.StoreUint64(g.slot(uint32(i)), word)
	}
}
