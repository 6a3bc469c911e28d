package watch

import (
	"encoding/binary"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
)

// eventSize is sizeof(struct lvw_event), from bpf2go's twin of it.
var eventSize = binary.Size(bpfLvwEvent{})

// decodeEvent decodes one ring buffer record; now is CLOCK_MONOTONIC, for the latency.
func decodeEvent(b []byte, now time.Duration) (Event, error) {
	var raw bpfLvwEvent
	if len(b) < eventSize {
		return Event{}, fmt.Errorf("short event: %d bytes, want %d", len(b), eventSize)
	}
	// bpfel: the generated objects are little-endian only.
	if _, err := binary.Decode(b, binary.LittleEndian, &raw); err != nil {
		return Event{}, fmt.Errorf("decode event: %w", err)
	}
	comm := make([]byte, 0, len(raw.Comm))
	for _, c := range raw.Comm {
		if c == 0 {
			break
		}
		comm = append(comm, byte(c))
	}
	ev := Event{
		Cookie:    raw.Cookie,
		Offset:    raw.Sector * sectorSize,
		Threshold: raw.Threshold * sectorSize,
		Queued:    time.Duration(raw.KtimeNs),
		Dev:       devFromKernel(raw.Dev),
		Length:    uint64(raw.NrSector) * sectorSize,
		PID:       raw.Pid,
		TID:       raw.Tid,
		Comm:      string(comm),
	}
	ev.Latency = now - ev.Queued
	return ev, nil
}

func monotonicNow() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts) // cannot fail for this clock
	return time.Duration(ts.Nano())
}
