package mailbox

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/lvwatch/lvwatch/internal/testutil"
	"golang.org/x/sys/unix"
)

const patience = 10 * time.Second // generous: a loaded 2-core CI box must not flake

// marked returns vdsm's block b as this process writes it: the same messages, and the
// owner mark in the reserved slot 63 under the checksum.
func marked(b Mailbox) Mailbox {
	b.setOwner(currentOwner())
	b.Seal()
	return b
}

// An lvwatch host against an SPM played by hand with vdsm's reference bytes: every block
// the host writes holds exactly the messages a vdsm host writes, and its owner mark.
func TestHostSpeaksVdsm(t *testing.T) {
	inbox, outbox := testVolumes(t)
	spm := openRaw(t, inbox, outbox)
	h := openTestHost(t, inbox, outbox, refHost)

	type res struct {
		size uint64
		err  error
	}
	done := make(chan res, 1)
	go func() {
		size, err := h.Extend(context.Background(), refDomain, refVolume, refExtend.SizeMiB)
		done <- res{size, err}
	}()

	wantRequest := marked(refBlock(t, "host7-request-mailbox.bin"))
	testutil.WaitFor(t, patience, "the request", func() bool { return spm.read(spm.in, refHost) == wantRequest })
	if _, ok := DecodeEvent(new(spm.read(spm.in, 0))); !ok {
		t.Error("no events block after the request")
	}
	spm.write(spm.out, refHost, refBlock(t, "host7-reply-mailbox.bin"))

	r := <-done
	if r.err != nil || r.size != refExtend.SizeMiB {
		t.Fatalf("Extend = %d, %v; want %d", r.size, r.err, refExtend.SizeMiB)
	}
	wantClean := marked(refBlock(t, "host7-clean-mailbox.bin"))
	testutil.WaitFor(t, patience, "the CLEAN acknowledgement", func() bool { return spm.read(spm.in, refHost) == wantClean })

	var echo Mailbox
	echo.SetSlot(0, CleanMessage)
	spm.write(spm.out, refHost, echo)
	testutil.WaitFor(t, patience, "the slot to be freed", func() bool { return spm.read(spm.in, refHost) == marked(Mailbox{}) })
}

// An lvwatch SPM against a host played by hand with vdsm's reference bytes.
func TestSPMSpeaksVdsm(t *testing.T) {
	inbox, outbox := testVolumes(t)
	host := openRaw(t, inbox, outbox)
	// Leftovers of an earlier SPM must be zeroed at start.
	host.write(host.out, refHost, refBlock(t, "host7-clean-mailbox.bin"))
	rec := &recorder{}
	s := fastSPM(t, inbox, outbox, rec)
	testutil.WaitFor(t, patience, "the outbox to be zeroed", func() bool { return host.read(host.out, refHost) == Mailbox{} })

	host.hostWrite(refHost, refBlock(t, "host7-request-mailbox.bin"))
	wantReply := refBlock(t, "host7-reply-mailbox.bin")
	testutil.WaitFor(t, patience, "the reply", func() bool { return host.read(host.out, refHost) == wantReply })
	if rec.count() != 1 || rec.requests[0] != (Request{HostID: refHost, Slot: 0, Extend: refExtend}) {
		t.Fatalf("handler got %+v", rec.requests)
	}

	host.hostWrite(refHost, refBlock(t, "host7-clean-mailbox.bin"))
	var wantEcho Mailbox
	wantEcho.SetSlot(0, CleanMessage)
	testutil.WaitFor(t, patience, "the CLEAN echo", func() bool { return host.read(host.out, refHost) == wantEcho })

	host.hostWrite(refHost, Mailbox{})
	// Unchanged slots are never acted on again, however many scans pass.
	scans := s.Stats().FullScans
	testutil.WaitFor(t, patience, "three more scans", func() bool { return s.Stats().FullScans >= scans+3 })
	if n := rec.count(); n != 1 {
		t.Errorf("handler called %d times, want 1", n)
	}
}

// A host that writes no events block (vdsm before 4.50) is served by the full scans.
func TestSPMServesHostsWithoutEvents(t *testing.T) {
	inbox, outbox := testVolumes(t)
	host := openRaw(t, inbox, outbox)
	rec := &recorder{}
	fastSPM(t, inbox, outbox, rec)
	host.write(host.in, refHost, refBlock(t, "host7-request-mailbox.bin"))
	want := refBlock(t, "host7-reply-mailbox.bin")
	testutil.WaitFor(t, patience, "the reply", func() bool { return host.read(host.out, refHost) == want })
	if _, ok := DecodeEvent(new(host.read(host.in, 0))); ok {
		t.Error("an events block appeared")
	}
}

// Many goroutines through one co-located host: more requests than slots, identical
// ones coalesced, every caller answered with its size.
func TestCoLocatedConcurrentExtends(t *testing.T) {
	inbox, outbox := testVolumes(t)
	rec := &recorder{}
	s := fastSPM(t, inbox, outbox, rec)
	h := openTestHost(t, inbox, outbox, 42)
	s.AddLocal(h)

	const distinct, callers = 150, 3 // 150 requests > 63 slots; each asked 3 times at once
	var wg sync.WaitGroup
	errs := make(chan error, distinct*callers)
	for i := range distinct {
		for range callers {
			wg.Go(func() {
				size := uint64(1024 + i)
				got, err := h.Extend(context.Background(), refDomain, volumeUUID(i), size)
				if err == nil && got != size {
					err = errors.New("wrong size granted")
				}
				if err != nil {
					errs <- err
				}
			})
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st := h.Stats()
	if n := rec.count(); n < distinct || n > distinct*callers {
		t.Errorf("handler saw %d requests for %d distinct ones", n, distinct)
	}
	if st.Requests+st.Coalesced != distinct*callers || st.Coalesced == 0 {
		t.Errorf("host stats %+v: want %d calls in all, some coalesced", st, distinct*callers)
	}
	testutil.WaitFor(t, patience, "the mailbox to empty", func() bool { return !hostBusy(h) })
}

// hostBusy reports whether h's request mailbox on disk still holds a message: once every
// handshake is over only the owner mark is left.
func hostBusy(h *Host) bool {
	v, err := OpenVolume(h.in.Path(), VolumeOptions{})
	if err != nil {
		return true
	}
	defer v.Close()
	buf := AlignedBuffer(BlockSize)
	return v.ReadAt(buf, blockOffset(h.id)) != nil || (*Mailbox)(buf).messages() != 0
}

func TestFailureThenRetry(t *testing.T) {
	inbox, outbox := testVolumes(t)
	rec := &recorder{fail: true}
	s := fastSPM(t, inbox, outbox, rec)
	h := openTestHost(t, inbox, outbox, 3)
	s.AddLocal(h)
	if _, err := h.Extend(context.Background(), refDomain, refVolume, 2048); !errors.Is(err, ErrExtendFailed) {
		t.Fatalf("Extend = %v, want ErrExtendFailed", err)
	}
	rec.mu.Lock()
	rec.fail = false
	rec.mu.Unlock()
	// The same request again, bytes-identical, goes through once the slot is clean.
	if got, err := h.Extend(context.Background(), refDomain, refVolume, 2048); err != nil || got != 2048 {
		t.Fatalf("retry = %d, %v", got, err)
	}
	if n := rec.count(); n != 2 {
		t.Errorf("handler saw %d requests, want 2", n)
	}
}

// After a crash the outbox may still hold the reply to the very request a host sends
// again. vdsm's SPM would never answer it in that slot (identical bytes look unchanged);
// the host must pick another slot, and clear a stale one when no other is free.
func TestStaleReplyAfterCrash(t *testing.T) {
	inbox, outbox := testVolumes(t)
	spm := openRaw(t, inbox, outbox)
	request, _ := refExtend.Encode()
	stale := replyFor(request, refExtend.SizeMiB)

	var out Mailbox
	out.SetSlot(0, stale)
	spm.write(spm.out, refHost, out)
	h := openTestHost(t, inbox, outbox, refHost)
	done := make(chan error, 1)
	go func() { _, err := h.Extend(context.Background(), refDomain, refVolume, refExtend.SizeMiB); done <- err }()
	var in Mailbox
	testutil.WaitFor(t, patience, "the request", func() bool { in = spm.read(spm.in, refHost); return in.Slot(1) == request })
	if in.Slot(0).Kind() != KindEmpty {
		t.Fatalf("slot 0 (stale reply) used: %x", in.Slot(0))
	}
	out.SetSlot(1, stale)
	spm.write(spm.out, refHost, out)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	closeNow(h) // as if crashed: the handshake of slot 1 is left unfinished

	// Every slot holds the stale reply: the host clears one with a CLEAN handshake first.
	for i := range MessagesPerMbox {
		out.SetSlot(i, stale)
	}
	spm.write(spm.out, refHost, out)
	h = openTestHost(t, inbox, outbox, refHost)
	go func() { _, err := h.Extend(context.Background(), refDomain, refVolume, refExtend.SizeMiB); done <- err }()
	testutil.WaitFor(t, patience, "a CLEAN in slot 0", func() bool { in = spm.read(spm.in, refHost); return in.Slot(0) == CleanMessage })
	out.SetSlot(0, CleanMessage)
	spm.write(spm.out, refHost, out)
	testutil.WaitFor(t, patience, "the request in slot 0", func() bool { in = spm.read(spm.in, refHost); return in.Slot(0) == request })
	out.SetSlot(0, stale)
	spm.write(spm.out, refHost, out)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	closeNow(h) // no SPM here to finish the handshake
}

// A reply for a smaller size (an earlier request for the same volume) is not taken as
// the answer; a larger one is.
func TestHostReplySizes(t *testing.T) {
	inbox, outbox := testVolumes(t)
	spm := openRaw(t, inbox, outbox)
	h := openTestHost(t, inbox, outbox, 9)
	type res struct {
		size uint64
		err  error
	}
	done := make(chan res, 1)
	go func() {
		size, err := h.Extend(context.Background(), refDomain, refVolume, 4096)
		done <- res{size, err}
	}()
	var in Mailbox
	testutil.WaitFor(t, patience, "the request", func() bool { in = spm.read(spm.in, 9); return in.Slot(0).Kind() == KindExtend })
	var out Mailbox
	out.SetSlot(0, replyFor(in.Slot(0), 2048))
	spm.write(spm.out, 9, out)
	select {
	case r := <-done:
		t.Fatalf("a smaller stale reply was taken: %+v", r)
	case <-time.After(100 * time.Millisecond):
	}
	out.SetSlot(0, replyFor(in.Slot(0), 8192))
	spm.write(spm.out, 9, out)
	if r := <-done; r.err != nil || r.size != 8192 {
		t.Fatalf("Extend = %+v, want 8192", r)
	}
	closeNow(h)
}

// A host with nothing in flight does no I/O at all.
func TestHostIdleDoesNoIO(t *testing.T) {
	inbox, outbox := testVolumes(t)
	rec := &recorder{}
	s := fastSPM(t, inbox, outbox, rec)
	h := openTestHost(t, inbox, outbox, 5)
	s.AddLocal(h)
	if _, err := h.Extend(context.Background(), refDomain, refVolume, 100); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, patience, "the handshake", func() bool { return !hostBusy(h) })
	time.Sleep(20 * time.Millisecond) // the last poll of the handshake may still be due
	before := h.Stats()
	time.Sleep(300 * time.Millisecond)
	if after := h.Stats(); after != before {
		t.Errorf("idle host did I/O: %+v → %+v", before, after)
	}
}

// A request held by the handler survives rescans, and is withdrawn (its context ends
// with ErrWithdrawn, its answer refused) when the host clears its mailbox.
func TestHeldRequestWithdrawn(t *testing.T) {
	inbox, outbox := testVolumes(t)
	rec := &recorder{hold: true}
	s := fastSPM(t, inbox, outbox, rec)
	h := openTestHost(t, inbox, outbox, 11)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	if _, err := h.Extend(ctx, refDomain, refVolume, 100); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Extend = %v, want the deadline", err)
	}
	scans := s.Stats().FullScans
	testutil.WaitFor(t, patience, "more scans", func() bool { return s.Stats().FullScans >= scans+3 })
	if rec.count() != 1 || rec.cancels() != 0 {
		t.Fatalf("held request: %d requests, %d cancelled; want 1, 0", rec.count(), rec.cancels())
	}
	closeNow(h) // clears the mailbox
	testutil.WaitFor(t, patience, "the withdrawal", func() bool { return rec.cancels() == 1 })
	if err := rec.held[0].Grant(100); !errors.Is(err, ErrWithdrawn) {
		t.Errorf("Grant after withdrawal = %v, want ErrWithdrawn", err)
	}
	if s.Stats().Withdrawn != 1 {
		t.Errorf("stats %+v", s.Stats())
	}
}

// A request answered late, from another goroutine, reaches the host.
func TestAsyncAnswer(t *testing.T) {
	inbox, outbox := testVolumes(t)
	rec := &recorder{hold: true}
	fastSPM(t, inbox, outbox, rec)
	h := openTestHost(t, inbox, outbox, 12)
	done := make(chan error, 1)
	go func() { _, err := h.Extend(context.Background(), refDomain, refVolume, 100); done <- err }()
	testutil.WaitFor(t, patience, "the request", func() bool { return rec.count() == 1 })
	time.Sleep(100 * time.Millisecond)
	if err := rec.held[0].Grant(99); err == nil {
		t.Error("granting less than asked accepted")
	}
	if err := rec.held[0].Grant(100); err != nil {
		t.Fatal(err)
	}
	if err := rec.held[0].Fail(nil); !errors.Is(err, ErrAnswered) && !errors.Is(err, ErrWithdrawn) {
		t.Errorf("second answer = %v", err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// Malformed requests get a failure reply; unknown opcodes none; a corrupt mailbox is
// not acted on.
func TestSPMBadInput(t *testing.T) {
	inbox, outbox := testVolumes(t)
	host := openRaw(t, inbox, outbox)
	rec := &recorder{}
	s := fastSPM(t, inbox, outbox, rec)

	good, _ := refExtend.Encode()
	badSize := good
	copy(badSize[37:53], "zzzzzzzzzzzzzzzz")
	unknown := good
	copy(unknown[1:5], "mrge")
	var mb Mailbox
	mb.SetSlot(0, badSize)
	mb.SetSlot(1, unknown)
	mb.Seal()
	host.hostWrite(20, mb)
	testutil.WaitFor(t, patience, "the failure reply", func() bool {
		out := host.read(host.out, 20)
		return out.Slot(0) == replyFor(badSize, 0)
	})
	if out := host.read(host.out, 20); out.Slot(1).Kind() != KindEmpty {
		t.Errorf("unknown opcode answered: %x", out.Slot(1))
	}

	var corrupt Mailbox
	corrupt.SetSlot(0, good)
	corrupt.Seal()
	corrupt[4092]++ // a wrong checksum
	host.hostWrite(21, corrupt)
	testutil.WaitFor(t, patience, "the checksum mismatch", func() bool { return s.Stats().BadChecksums > 0 })
	scans := s.Stats().FullScans
	testutil.WaitFor(t, patience, "more scans", func() bool { return s.Stats().FullScans >= scans+2 })
	if rec.count() != 0 {
		t.Errorf("handler called for bad input: %+v", rec.requests)
	}
}

func TestOpenErrors(t *testing.T) {
	dir := directDir(t)
	small := filepath.Join(dir, "small")
	if err := os.WriteFile(small, make([]byte, BlockSize), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, path := range []string{small, dir, filepath.Join(dir, "missing")} {
		if v, err := OpenVolume(path, VolumeOptions{}); err == nil {
			v.Close()
			t.Errorf("OpenVolume(%s) succeeded", path)
		}
	}
	inbox, outbox := testVolumes(t)
	for _, id := range []int{0, 250, -1} {
		if _, err := OpenHost(HostConfig{Inbox: inbox, Outbox: outbox, HostID: id}); err == nil {
			t.Errorf("OpenHost(host %d) succeeded", id)
		}
	}
	if _, err := OpenSPM(SPMConfig{Inbox: inbox, Outbox: outbox}); err == nil {
		t.Error("OpenSPM without a handler succeeded")
	}
	h := openTestHost(t, inbox, outbox, 1)
	if _, err := h.Extend(context.Background(), refDomain, refVolume, 0); err == nil {
		t.Error("Extend to 0 MiB accepted")
	}
	if _, err := h.Extend(context.Background(), refDomain, refVolume, MaxSizeMiB+1); err == nil {
		t.Error("Extend above the limit accepted")
	}
	h.Close(context.Background())
	if _, err := h.Extend(context.Background(), refDomain, refVolume, 1); !errors.Is(err, ErrClosed) {
		t.Errorf("Extend after Close = %v", err)
	}
}

// Reads that fail (here: the inbox file cut short under the SPM) are retried with
// backoff, and the request goes through once the volume is back.
func TestReadErrorsRetried(t *testing.T) {
	inbox, outbox := testVolumes(t)
	rec := &recorder{}
	s := fastSPM(t, inbox, outbox, rec)
	h := openTestHost(t, inbox, outbox, 4)
	if err := os.Truncate(inbox, 0); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := h.Extend(context.Background(), refDomain, refVolume, 100); done <- err }()
	testutil.WaitFor(t, patience, "failed reads", func() bool { return s.Stats().IOErrors >= 2 })
	if err := os.Truncate(inbox, UsedSize); err != nil {
		t.Fatal(err)
	}
	waitNoError(t, done, "no reply after the volume came back")
}

// Writes that fail (the outbox loop device made read-only under the SPM) are retried
// with backoff, and the reply arrives once the device is writable again.
func TestWriteErrorsRetried(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireFile(t, "/dev/loop-control", "loop devices")
	inbox, outbox := loopVolumes(t)
	rec := &recorder{hold: true}
	s := fastSPM(t, inbox, outbox, rec)
	h := openTestHost(t, inbox, outbox, 4)
	done := make(chan error, 1)
	go func() { _, err := h.Extend(context.Background(), refDomain, refVolume, 100); done <- err }()
	testutil.WaitFor(t, patience, "the request", func() bool { return rec.count() == 1 })
	setReadOnly(t, outbox, true)
	rec.held[0].Grant(100)
	testutil.WaitFor(t, patience, "failed writes", func() bool { return s.Stats().IOErrors >= 2 })
	setReadOnly(t, outbox, false)
	waitNoError(t, done, "no reply after the device became writable")
}

func setReadOnly(t *testing.T, dev string, ro bool) {
	f, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	v := 0
	if ro {
		v = 1
	}
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.BLKROSET, v); err != nil {
		t.Fatal(err)
	}
}

// A HandlerFunc that returns a size Grant refuses (less than asked, no error) must still
// answer: the host gets a failure, not a request that is never answered.
func TestHandlerFuncBadSizeAnswersFailure(t *testing.T) {
	inbox, outbox := testVolumes(t)
	s := fastSPM(t, inbox, outbox, HandlerFunc(func(_ context.Context, req Request) (uint64, error) {
		return req.SizeMiB - 1, nil
	}))
	h := openTestHost(t, inbox, outbox, 13)
	s.AddLocal(h)
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	if _, err := h.Extend(ctx, refDomain, refVolume, 100); !errors.Is(err, ErrExtendFailed) {
		t.Fatalf("Extend = %v, want ErrExtendFailed", err)
	}
}

// Negative durations take the defaults like zero ones, instead of scanning without pause.
func TestNegativeIntervalsTakeDefaults(t *testing.T) {
	inbox, outbox := testVolumes(t)
	s, err := OpenSPM(SPMConfig{Inbox: inbox, Outbox: outbox, Handler: &recorder{}, Log: testLog(t),
		EventPollMin: -time.Millisecond, EventPollMax: -time.Millisecond, ScanInterval: -time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	time.Sleep(300 * time.Millisecond)
	// The defaults allow one full scan (at start) and a few event reads in this time.
	if st := s.Stats(); st.FullScans > 10 || st.EventReads > 1000 {
		t.Errorf("idle SPM with negative intervals: %+v", st)
	}
}
