package mailbox

import (
	"context"
	"testing"
	"time"
)

func FuzzDecodeExtend(f *testing.F) {
	req, _ := refExtend.Encode()
	f.Add(req[:])
	f.Add(CleanMessage[:])
	f.Add(make([]byte, MessageSize))
	f.Fuzz(func(t *testing.T, b []byte) {
		var m Message
		copy(m[:], b)
		e, err := DecodeExtend(m)
		if err != nil {
			return
		}
		if m.Kind() != KindExtend || e.SizeMiB > MaxSizeMiB {
			t.Fatalf("decoded %+v from a %v message", e, m.Kind())
		}
		// What decodes re-encodes to the same request bytes (version, opcode, volume, size).
		again, err := e.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if !replyTo(&again, &m) && m[0] == messageVersion {
			t.Fatalf("re-encoded %x from %x", again, m)
		}
		if back, _ := DecodeExtend(again); back != e {
			t.Fatalf("round trip %+v → %+v", e, back)
		}
	})
}

func FuzzParseUUID(f *testing.F) {
	f.Add("8adbc85e-e554-4ae0-b318-8a5465fe5fe1")
	f.Add("8ADBC85E-E554-4AE0-B318-8A5465FE5FE1")
	f.Add("8adbc85e-e554-4ae0-b318-8a5465fe5fe")
	f.Fuzz(func(t *testing.T, s string) {
		u, err := ParseUUID(s)
		if err != nil {
			return
		}
		if back, err := ParseUUID(u.String()); err != nil || back != u {
			t.Fatalf("%q → %v → %v, %v", s, u, back, err)
		}
	})
}

// bareSPM is an SPM without volumes or loop, to feed examine directly.
func bareSPM(t testing.TB, h Handler) *SPM {
	ctx, cancel := context.WithCancel(context.Background())
	alarm, err := newAlarm()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cancel(); alarm.close() })
	return &SPM{
		cfg: SPMConfig{Handler: h, MaxHandling: DefaultMaxHandling}, ctx: ctx, cancel: cancel,
		alarm: alarm, local: map[int]*Host{}, outbox: AlignedBuffer(UsedSize),
	}
}

// Any mailbox content from disk: the SPM never panics, never acts on a mailbox whose
// checksum fails, and answers only extend requests. The input is two writes of edits,
// each edit a slot number and its 64 bytes, then a byte saying whether to seal the
// mailbox (fix its checksum): small inputs that still reach every slot.
func FuzzSPMExamine(f *testing.F) {
	req, _ := refExtend.Encode()
	bad := req
	copy(bad[37:], "zz")
	edit := func(slot byte, m Message) []byte { return append([]byte{slot}, m[:]...) }
	f.Add(append(edit(0, req), 1), append(edit(0, CleanMessage), 1))
	f.Add(append(edit(3, req), 0), append(append(edit(3, req), edit(40, bad)...), 1))
	f.Add(append(edit(63, req), 1), []byte{})
	rec := &recorder{}
	s := bareSPM(f, rec)
	f.Fuzz(func(t *testing.T, first, second []byte) {
		// Start from a fresh SPM's view of the host (cheaper than a new SPM each run).
		s.view[refHost], s.badSig[refHost] = Mailbox{}, 0
		s.cancelPending()
		rec.requests = nil
		copy(s.outbox[blockOffset(refHost):], make([]byte, BlockSize))
		var mb Mailbox
		for _, writes := range [][]byte{first, second} {
			for ; len(writes) > MessageSize; writes = writes[MessageSize+1:] {
				copy(mb[int(writes[0]%SlotsPerMailbox)*MessageSize:], writes[1:MessageSize+1])
			}
			if len(writes) > 0 && writes[0]&1 == 1 {
				mb.Seal()
			}
			before := rec.count()
			s.examine(refHost, &mb, time.Now())
			s.applyAnswers()
			if !mb.Valid() && rec.count() != before {
				t.Fatal("acted on a mailbox with a bad checksum")
			}
		}
		out := (*Mailbox)(s.outbox[blockOffset(refHost):])
		for i := range MessagesPerMbox {
			if k := out.Slot(i).Kind(); k != KindEmpty && k != KindClean && k != KindExtend {
				t.Fatalf("wrote a %v message into the outbox", k)
			}
		}
	})
}

// Any reply mailbox content: the host never panics, and answers its callers only with
// a size at least the one asked for, or an error.
func FuzzHostAdvance(f *testing.F) {
	reply := refBlock(f, "host7-reply-mailbox.bin")
	f.Add(reply[:], uint16(5120))
	f.Add(reply[:], uint16(6000))
	f.Add(CleanMessage[:], uint16(1))
	f.Fuzz(func(t *testing.T, b []byte, size uint16) {
		if size == 0 {
			return
		}
		h := &Host{byMsg: map[Message]*request{}}
		msg, _ := Extend{Domain: refDomain, Volume: refVolume, SizeMiB: uint64(size)}.Encode()
		res := make(chan result, 1)
		r := &request{msg: msg, size: uint64(size), waiters: []chan result{res}}
		h.byMsg[msg] = r
		h.slots[0] = hostSlot{state: slotRequested, req: r}
		h.slots[1] = hostSlot{state: slotAcked, req: r}
		copy(h.outbox[:], b)
		h.advance()
		select {
		case got := <-res:
			if got.err == nil && got.granted < uint64(size) {
				t.Fatalf("granted %d for %d", got.granted, size)
			}
			if h.slots[0].state != slotAcked || h.mbox.Slot(0) != CleanMessage {
				t.Fatal("answered without acknowledging")
			}
		default:
			if h.slots[0].state != slotRequested {
				t.Fatal("slot moved on without an answer")
			}
		}
		if out := h.outbox.Slot(1); (out == CleanMessage) != (h.slots[1].state == slotFree) {
			t.Fatal("acked slot freed without a CLEAN echo, or kept with one")
		}
	})
}
