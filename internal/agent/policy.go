package agent

import (
	"fmt"
	"math"
)

// Policy says when and by how much a watched LV grows.
type Policy struct {
	// Chunk is what one extension adds (bytes).
	Chunk uint64
	// Trigger is the free space left in the LV when it is extended (bytes): the
	// threshold is armed at size − Trigger.
	Trigger uint64
	// Overhead times a qcow2 image's virtual size is the most its LV may grow to
	// (the image's metadata and refcounts need room beyond the guest's data).
	Overhead float64
}

// Defaults of Policy. A crossing is served in tens of milliseconds (README:
// "Choosing the chunk and trigger"), so the trigger need only cover what the
// fastest writer writes in the worst round trip, with a wide margin; vdsm's
// 2048 MiB trigger covers its round trip of over a second.
const (
	DefaultChunk    = 1 << 30
	DefaultTrigger  = 512 << 20
	DefaultOverhead = 1.1 // vdsm's
)

func (p Policy) withDefaults() Policy {
	if p.Chunk == 0 {
		p.Chunk = DefaultChunk
	}
	if p.Trigger == 0 {
		p.Trigger = DefaultTrigger
	}
	if p.Overhead == 0 {
		p.Overhead = DefaultOverhead
	}
	return p
}

func (p Policy) validate() error {
	switch {
	case p.Chunk < 1<<20:
		return fmt.Errorf("chunk %d bytes: at least 1 MiB", p.Chunk)
	case p.Overhead < 1:
		return fmt.Errorf("overhead %g: at least 1", p.Overhead)
	}
	return nil
}

// threshold is where a volume of size bytes is armed: Trigger before its end.
// ok is false when the volume has no more than Trigger bytes: it is extended at
// once.
func (p Policy) threshold(size uint64) (thr uint64, ok bool) {
	if size <= p.Trigger {
		return 0, false
	}
	return size - p.Trigger, true
}

// next is the size a volume of size bytes is extended to: one chunk more, at
// most maxSize, in whole MiB (the mailbox's unit).
func (p Policy) next(size, maxSize uint64) uint64 {
	return roundMiB(min(size+p.Chunk, maxSize))
}

// maxSize is the most an image of virtualSize bytes may take, in whole MiB.
func (p Policy) maxSize(virtualSize uint64) uint64 {
	m := math.Ceil(float64(virtualSize) * p.Overhead)
	if m >= math.MaxUint64/2 {
		return math.MaxUint64 &^ (1<<20 - 1)
	}
	return roundMiB(uint64(m))
}

// roundMiB rounds n bytes up to a whole MiB.
func roundMiB(n uint64) uint64 { return (n + 1<<20 - 1) &^ (1<<20 - 1) }
