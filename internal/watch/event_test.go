package watch

import (
	"encoding/binary"
	"testing"
	"time"
)

// The layout of struct lvw_event in bpf/lvwatch.c, written out by hand as the
// oracle for the decoder, which goes through bpf2go's generated type.
func encodeEvent(cookie, sector, threshold, ktime uint64, dev, nr, pid, tid uint32, comm []byte) []byte {
	b := make([]byte, 64)
	le := binary.LittleEndian
	le.PutUint64(b[0:], cookie)
	le.PutUint64(b[8:], sector)
	le.PutUint64(b[16:], threshold)
	le.PutUint64(b[24:], ktime)
	le.PutUint32(b[32:], dev)
	le.PutUint32(b[36:], nr)
	le.PutUint32(b[40:], pid)
	le.PutUint32(b[44:], tid)
	copy(b[48:64], comm)
	return b
}

func TestEventSize(t *testing.T) {
	if eventSize != 64 {
		t.Fatalf("bpf2go's lvw_event is %d bytes, the C struct 64", eventSize)
	}
}

func FuzzDecodeEvent(f *testing.F) {
	f.Add(uint64(1), uint64(2048), uint64(2000), uint64(5e9), uint32(253<<20|4), uint32(8), uint32(42), uint32(43), []byte("qemu-kvm"), 0)
	f.Add(uint64(0), uint64(1)<<55, uint64(0), uint64(0), uint32(0xffffffff), uint32(0xffffffff), uint32(0), uint32(0), []byte("0123456789abcdefXYZ"), 3)
	f.Fuzz(func(t *testing.T, cookie, sector, threshold, ktime uint64, dev, nr, pid, tid uint32, comm []byte, trim int) {
		b := encodeEvent(cookie, sector, threshold, ktime, dev, nr, pid, tid, comm)
		if trim > 0 && trim <= len(b) {
			if _, err := decodeEvent(b[:len(b)-trim], 0); err == nil {
				t.Fatalf("%d of 64 bytes decoded", len(b)-trim)
			}
			return
		}
		const now = time.Hour
		ev, err := decodeEvent(b, now)
		if err != nil {
			t.Fatalf("64 bytes rejected: %v", err)
		}
		want := Event{Dev: devFromKernel(dev), Cookie: cookie, Offset: sector * 512, Length: uint64(nr) * 512,
			Threshold: threshold * 512, PID: pid, TID: tid, Comm: cString(comm), Queued: time.Duration(ktime),
			Latency: now - time.Duration(ktime)}
		if ev != want {
			t.Fatalf("decoded %+v, want %+v", ev, want)
		}
	})
}

// cString is comm as the kernel's 16-byte field holds it, up to its first NUL.
func cString(b []byte) string {
	b = b[:min(len(b), 16)]
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	return string(b)
}
