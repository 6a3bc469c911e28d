package mailbox

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lvwatch/lvwatch/internal/lvm/lvmtest"
	"github.com/lvwatch/lvwatch/internal/testutil"
	"github.com/rs/zerolog"
)

// A volume whose first sectors carry a known signature (here a real LVM2 PV on a loop
// device) is refused by OpenVolume, OpenHost and OpenSPM, and left as it was; forced, it
// opens.
func TestOpenRefusesSignatures(t *testing.T) {
	env := lvmtest.New(t, 2, 2<<20)
	pv, outbox := env.Paths()[0], env.Paths()[1]
	env.MustRun("pvcreate", "-q", pv)
	if v, err := OpenVolume(pv, VolumeOptions{}); !errors.Is(err, ErrSignature) || !strings.Contains(err.Error(), "LVM2 physical volume") {
		if err == nil {
			v.Close()
		}
		t.Fatalf("OpenVolume(PV) = %v, want ErrSignature naming LVM2", err)
	}
	if _, err := OpenHost(HostConfig{Inbox: pv, Outbox: outbox, HostID: 1}); !errors.Is(err, ErrSignature) {
		t.Errorf("OpenHost with a PV as inbox = %v", err)
	}
	if _, err := OpenSPM(SPMConfig{Inbox: outbox, Outbox: pv, Handler: &recorder{}}); !errors.Is(err, ErrSignature) {
		t.Errorf("OpenSPM with a PV as outbox = %v", err)
	}
	env.MustRun("pvs", pv) // still a PV
	v, err := OpenVolume(pv, VolumeOptions{IgnoreSignatures: true})
	if err != nil {
		t.Fatal(err)
	}
	v.Close()
}

// Requests no SPM answers, whose callers all gave up, are withdrawn once AbandonAfter
// old: 63 of them no longer wedge the host. A request a caller still waits for stays.
func TestAbandonedRequestsWithdrawn(t *testing.T) {
	inbox, outbox := testVolumes(t)
	h, err := OpenHost(HostConfig{Inbox: inbox, Outbox: outbox, HostID: 14, Log: testLog(t), AbandonAfter: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeNow(h) })
	ctx, giveUp := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	for i := range MessagesPerMbox {
		wg.Go(func() {
			if _, err := h.Extend(ctx, refDomain, volumeUUID(i), 100); !errors.Is(err, context.Canceled) {
				t.Errorf("Extend = %v, want the caller's cancel", err)
			}
		})
	}
	testutil.WaitFor(t, patience, "every slot taken", func() bool { return h.Stats().Requests == MessagesPerMbox })
	giveUp()
	wg.Wait()
	testutil.WaitFor(t, patience, "the abandoned requests withdrawn", func() bool {
		return h.Stats().Withdrawn == MessagesPerMbox && !hostBusy(h)
	})

	done := make(chan error, 1)
	go func() { _, err := h.Extend(context.Background(), refDomain, volumeUUID(100), 100); done <- err }()
	testutil.WaitFor(t, patience, "the waited-for request", func() bool { return hostBusy(h) })
	time.Sleep(200 * time.Millisecond) // four times AbandonAfter
	if n := h.Stats().Withdrawn; n != MessagesPerMbox {
		t.Fatalf("%d requests withdrawn, want %d: one a caller waits for was withdrawn", n, MessagesPerMbox)
	}
	fastSPM(t, inbox, outbox, &recorder{})
	waitNoError(t, done, "no reply once an SPM came")
}

// A request sent again after its withdrawal goes into another slot: in the
// same one, a vdsm SPM that missed the slot's empty spell would see the very
// bytes it saw before and never act on them.
func TestWithdrawnRequestResentElsewhere(t *testing.T) {
	inbox, outbox := testVolumes(t)
	const id = 15
	h, err := OpenHost(HostConfig{Inbox: inbox, Outbox: outbox, HostID: id, Log: testLog(t), AbandonAfter: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeNow(h) })
	ctx, giveUp := context.WithCancel(context.Background())
	go func() { h.Extend(ctx, refDomain, volumeUUID(1), 100) }()
	testutil.WaitFor(t, patience, "the request placed", func() bool { return h.Stats().Requests == 1 })
	giveUp()
	testutil.WaitFor(t, patience, "the request withdrawn", func() bool { return h.Stats().Withdrawn == 1 && !hostBusy(h) })

	done := make(chan error, 1)
	go func() { _, err := h.Extend(context.Background(), refDomain, volumeUUID(1), 100); done <- err }()
	testutil.WaitFor(t, patience, "the request sent again", func() bool { return h.Stats().Requests == 2 })
	r := openRaw(t, inbox, outbox)
	testutil.WaitFor(t, patience, "the request on disk", func() bool {
		mb := r.read(r.in, id)
		return mb.Slot(1).Kind() == KindExtend
	})
	if mb := r.read(r.in, id); mb.Slot(0).Kind() != KindEmpty {
		t.Errorf("the request went back into the slot it was withdrawn from: %x", mb.Slot(0))
	}
	fastSPM(t, inbox, outbox, &recorder{})
	waitNoError(t, done, "no reply to the request sent again")
}

// A host writing ever new bad checksums or unknown opcodes gets one warning per
// interval, not one per content.
func TestSPMLogsRepeatsOnce(t *testing.T) {
	inbox, outbox := testVolumes(t)
	log := &testutil.LogBuffer{}
	s, err := OpenSPM(SPMConfig{Inbox: inbox, Outbox: outbox, Handler: &recorder{}, Log: zerolog.New(log), ScanInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	host := openRaw(t, inbox, outbox)
	good, _ := refExtend.Encode()
	for i := range 5 {
		var corrupt Mailbox
		corrupt.SetSlot(0, good)
		corrupt.Seal()
		corrupt[checksumOffset] += byte(1 + i) // a new wrong checksum each time
		n := s.Stats().BadChecksums
		host.hostWrite(21, corrupt)
		testutil.WaitFor(t, patience, "the checksum mismatch", func() bool { return s.Stats().BadChecksums > n })

		unknown := good
		copy(unknown[1:5], "mrge")
		unknown[10] = byte(i)
		var mb Mailbox
		mb.SetSlot(0, unknown)
		mb.Seal()
		n = s.Stats().BadMessages
		host.hostWrite(22, mb)
		testutil.WaitFor(t, patience, "the unknown message", func() bool { return s.Stats().BadMessages > n })
	}
	for _, msg := range []string{"checksum mismatch", "unknown message type"} {
		if n := len(log.Lines(msg)); n != 1 {
			t.Errorf("%q logged %d times, want once", msg, n)
		}
	}
}

// At most MaxHandling requests are with the handler unanswered; the others wait and
// are handed over, in order, as answers free places.
func TestHandlerPlacesCapped(t *testing.T) {
	inbox, outbox := testVolumes(t)
	rec := &recorder{hold: true}
	s, err := OpenSPM(SPMConfig{Inbox: inbox, Outbox: outbox, Handler: rec, Log: testLog(t), ScanInterval: 50 * time.Millisecond, MaxHandling: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h := openTestHost(t, inbox, outbox, 15)
	s.AddLocal(h)
	const n = 12
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			if _, err := h.Extend(context.Background(), refDomain, volumeUUID(i), 100); err != nil {
				t.Error(err)
			}
		})
	}
	testutil.WaitFor(t, patience, "the host's requests", func() bool { return h.Stats().Requests == n })
	scans := s.Stats().FullScans
	testutil.WaitFor(t, patience, "three more scans", func() bool { return s.Stats().FullScans >= scans+3 })
	if got := rec.count(); got != 5 {
		t.Fatalf("handler holds %d requests, want MaxHandling = 5", got)
	}
	for i := range n {
		var r *Reply
		testutil.WaitFor(t, patience, "the next request for the handler", func() bool {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if len(rec.held) > i {
				r = rec.held[i]
			}
			return r != nil
		})
		if got := rec.count(); got > i+5 {
			t.Fatalf("%d requests handed over with %d answered", got, i)
		}
		if err := r.Grant(100); err != nil {
			t.Fatal(err)
		}
	}
	wg.Wait()
}

// After RemoveLocal the host no longer wakes the SPM (nor the SPM the host), and
// still gets its answers through the volumes.
func TestRemoveLocal(t *testing.T) {
	inbox, outbox := testVolumes(t)
	s := fastSPM(t, inbox, outbox, &recorder{})
	h := openTestHost(t, inbox, outbox, 16)
	s.AddLocal(h)
	if _, err := h.Extend(context.Background(), refDomain, refVolume, 100); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, patience, "the handshake", func() bool { return !hostBusy(h) })
	if s.Stats().HostReads == 0 {
		t.Fatal("the co-located host never woke the SPM")
	}
	s.RemoveLocal(h)
	if h.spm.Load() != nil {
		t.Error("the removed host still links the SPM")
	}
	reads := s.Stats().HostReads
	// A linked host wakes the SPM for each of its 3 writes a request: 15 reads
	// for 5 requests. Allowed are 2 not theirs: the wake of the first handshake's
	// last write, which hostBusy may see on disk before the host calls Wake, and
	// one re-read of a mailbox a scan found half-written.
	const requests = 5
	for i := range requests {
		if _, err := h.Extend(context.Background(), refDomain, refVolume, uint64(200+i)); err != nil {
			t.Fatal(err)
		}
		testutil.WaitFor(t, patience, "the handshake", func() bool { return !hostBusy(h) })
	}
	if got := s.Stats().HostReads; got > reads+2 {
		t.Errorf("the removed host woke the SPM: %d host reads for %d requests, want at most %d", got, requests, reads+2)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.local) != 0 {
		t.Errorf("SPM still links %v", s.local)
	}
}

// The SPM writes again the reply and the CLEAN echo someone overwrote (here zeroed,
// as an operator's mailbox init does): a vdsm host waiting for them is not stuck.
// The request is not handled again for it.
func TestProcessesSPMReassertsOutbox(t *testing.T) {
	inbox, outbox := testVolumes(t)
	handled := filepath.Join(t.TempDir(), "handled")
	spm := startSPMProcess(t, inbox, outbox, handled, envScan+"=50ms")
	host := openRaw(t, inbox, outbox)
	host.hostWrite(refHost, refBlock(t, "host7-request-mailbox.bin"))
	reply := refBlock(t, "host7-reply-mailbox.bin")
	var echo Mailbox
	echo.SetSlot(0, CleanMessage)
	for _, step := range []struct {
		what string
		want Mailbox
	}{{"the reply", reply}, {"the CLEAN echo", echo}} {
		if step.want == echo {
			host.hostWrite(refHost, refBlock(t, "host7-clean-mailbox.bin"))
		}
		testutil.WaitFor(t, patience, step.what, func() bool { return host.read(host.out, refHost) == step.want })
		host.write(host.out, refHost, Mailbox{})
		testutil.WaitFor(t, patience, step.what+" written again", func() bool { return host.read(host.out, refHost) == step.want })
	}
	// A mailbox this SPM has nothing in is another SPM's to write (one that took
	// over): left alone, while an overwritten one of its own is written again.
	const otherHost = refHost + 2
	foreign := reply
	host.write(host.out, otherHost, foreign)
	host.write(host.out, refHost, Mailbox{})
	testutil.WaitFor(t, patience, "the echo written again", func() bool { return host.read(host.out, refHost) == echo })
	if got := host.read(host.out, otherHost); got != foreign {
		t.Errorf("the SPM overwrote a mailbox it has nothing in: %x...", got[:64])
	}
	if r := spm.report(t); r.Stats.Reasserted < 3 || r.Stats.OutboxReads == 0 {
		t.Errorf("SPM stats %+v: want the mailbox reasserted three times", r.Stats)
	}
	if lines := handledLines(t, handled); len(lines) != 1 {
		t.Errorf("handled %v, want the request once", lines)
	}
	spm.stop(t)
}

// A host that writes its events block in a loop, with no mailbox change behind it, does
// not drive the SPM to a full scan every millisecond: it gets the idle pace. (An upper
// bound on the SPM's work: a slow machine only makes it easier to meet.)
func TestProcessesEventNoise(t *testing.T) {
	inbox, outbox := testVolumes(t)
	handled := filepath.Join(t.TempDir(), "handled")
	spm := startSPMProcess(t, inbox, outbox, handled)
	host := openRaw(t, inbox, outbox)
	time.Sleep(time.Second) // the SPM settles to its idle pace
	before := spm.report(t).Stats
	writes := 0
	for end := time.Now().Add(2 * time.Second); time.Now().Before(end); writes++ {
		host.write(host.in, 0, EncodeEvent(EventID{byte(writes), byte(writes >> 8), byte(writes >> 16), 0xee}))
	}
	after := spm.report(t).Stats
	// Unbounded, the SPM scans at its 1 ms pace: up to 2000 scans here.
	if scans := after.FullScans - before.FullScans; scans > 150 {
		t.Errorf("%d full scans for %d events-block writes in 2 s with no mailbox change", scans, writes)
	}
	host.hostWrite(refHost, refBlock(t, "host7-request-mailbox.bin"))
	want := refBlock(t, "host7-reply-mailbox.bin")
	testutil.WaitFor(t, patience, "the reply", func() bool { return host.read(host.out, refHost) == want })
	spm.stop(t)
}
