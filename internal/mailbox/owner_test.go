package mailbox

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lvwatch/lvwatch/internal/testutil"
)

func TestOwnerMark(t *testing.T) {
	mb := refBlock(t, "host7-request-mailbox.bin")
	o := Owner{Machine: [16]byte{1, 2, 3}, Boot: [16]byte{4, 5, 6}, PIDNS: 4026531836, PID: 4242, Start: 123456789}
	before := mb
	mb.setOwner(o)
	mb.Seal()
	if got, ok := mb.Owner(); !ok || got != o {
		t.Fatalf("Owner() = %+v, %v; want %+v", got, ok, o)
	}
	if [ownerOffset]byte(mb[:]) != [ownerOffset]byte(before[:]) {
		t.Error("the mark changed slots 0..62")
	}
	// A reader that took slot 63 for a message would see an empty one.
	if k := mb.Slot(MessagesPerMbox).Kind(); k != KindEmpty {
		t.Errorf("slot 63 reads as %v", k)
	}
	if _, ok := before.Owner(); ok {
		t.Error("vdsm's block has an owner mark")
	}
	// An SPM finds exactly vdsm's request in the marked mailbox.
	rec := &recorder{}
	s := bareSPM(t, rec)
	s.examine(refHost, &mb, time.Now())
	if rec.count() != 1 || rec.requests[0].Extend != refExtend {
		t.Errorf("SPM found %+v in the marked mailbox", rec.requests)
	}
}

// claim's rule, case by case: who may clear a mailbox that holds messages.
func TestClaim(t *testing.T) {
	self := Owner{Machine: [16]byte{0xaa}, Boot: [16]byte{0xbb}, PIDNS: 7, PID: 100, Start: 50}
	alive := func(pid int, start uint64) bool { return pid == 200 && start == 60 }
	withOwner := func(o Owner) Mailbox {
		mb := refBlock(t, "host7-request-mailbox.bin")
		mb.setOwner(o)
		mb.Seal()
		return mb
	}
	other := func(edit func(*Owner)) Mailbox {
		o := self
		edit(&o)
		return withOwner(o)
	}
	torn := refBlock(t, "host7-request-mailbox.bin")
	torn[100] = 1
	var empty Mailbox
	empty.setOwner(Owner{PID: 9})
	empty.Seal()
	for _, tc := range []struct {
		name   string
		mb     Mailbox
		refuse string // "" to allow
	}{
		{"no message", empty, ""},
		{"checksum fails", torn, ""},
		{"vdsm's request", refBlock(t, "host7-request-mailbox.bin"), "vdsm"},
		{"vdsm's CLEAN", refBlock(t, "host7-clean-mailbox.bin"), "vdsm"},
		{"this process", withOwner(self), ""},
		{"running process of this boot", other(func(o *Owner) { o.PID, o.Start = 200, 60 }), "which is running"},
		{"exited process of this boot", other(func(o *Owner) { o.PID, o.Start = 300, 60 }), ""},
		{"pid reused since", other(func(o *Owner) { o.PID, o.Start = 200, 59 }), ""},
		{"other PID namespace", other(func(o *Owner) { o.PID, o.PIDNS = 300, 8 }), "another PID namespace"},
		{"earlier boot of this machine", other(func(o *Owner) { o.Boot[0] = 1 }), ""},
		{"another machine", other(func(o *Owner) { o.Boot[0], o.Machine[0] = 1, 1 }), "another machine"},
		{"machine unknown", other(func(o *Owner) { o.Boot[0], o.Machine = 1, [16]byte{} }), "another machine"},
	} {
		err := claim(refHost, &tc.mb, self, alive)
		switch {
		case tc.refuse == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.refuse != "" && (!errors.Is(err, ErrHostIDInUse) || !strings.Contains(err.Error(), tc.refuse) || !strings.Contains(err.Error(), "host id 7")):
			t.Errorf("%s: %v, want a refusal naming host id 7 and %q", tc.name, err, tc.refuse)
		}
	}
	if (Owner{}) == currentOwner() {
		t.Error("currentOwner knows nothing of this process")
	}
}

// A host id whose mailbox holds someone else's requests is refused, naming the id,
// and left untouched; taking it over clears it. Someone else: vdsm (no mark), or an
// lvwatch host process that runs. Once that process has died (crashed mid-request),
// its requests are void and a new host clears them without being told.
func TestProcessesHostIDInUse(t *testing.T) {
	inbox, outbox := testVolumes(t)
	raw := openRaw(t, inbox, outbox)
	vdsm := refBlock(t, "host7-request-mailbox.bin")
	raw.hostWrite(refHost, vdsm)
	cfg := HostConfig{Inbox: inbox, Outbox: outbox, HostID: refHost, Log: testLog(t)}
	if h, err := OpenHost(cfg); !errors.Is(err, ErrHostIDInUse) || !strings.Contains(err.Error(), "host id 7") {
		if err == nil {
			closeNow(h)
		}
		t.Fatalf("OpenHost on vdsm's pending request = %v, want ErrHostIDInUse naming host id 7", err)
	}
	if raw.read(raw.in, refHost) != vdsm {
		t.Fatal("the refused host changed the mailbox")
	}
	cfg.TakeOver = true
	h, err := OpenHost(cfg)
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, patience, "the taken-over mailbox to be cleared", func() bool { return !hostBusy(h) })
	closeNow(h)

	const id = 30
	child := startChild(t, append(volumeEnv(inbox, outbox), envRole+"=host", envHostID+"="+strconv.Itoa(id), envCount+"=3")...)
	testutil.WaitFor(t, patience, "the host process's requests", func() bool { mb := raw.read(raw.in, id); return mb.messages() == 3 })
	cfg = HostConfig{Inbox: inbox, Outbox: outbox, HostID: id, Log: testLog(t)}
	if h, err := OpenHost(cfg); !errors.Is(err, ErrHostIDInUse) || !strings.Contains(err.Error(), "running") {
		if err == nil {
			closeNow(h)
		}
		t.Fatalf("OpenHost beside a running host process = %v, want ErrHostIDInUse", err)
	}
	child.cmd.Process.Signal(unix.SIGKILL)
	child.cmd.Wait()
	h = openTestHost(t, inbox, outbox, id)
	testutil.WaitFor(t, patience, "the dead host's requests to be cleared", func() bool { return !hostBusy(h) })
}

// Any slot 63: the mark decodes without panic, and what decodes encodes back to itself.
func FuzzOwner(f *testing.F) {
	var mb Mailbox
	mb.setOwner(currentOwner())
	f.Add(mb[ownerOffset:])
	f.Add(make([]byte, 64))
	f.Fuzz(func(t *testing.T, b []byte) {
		var mb Mailbox
		copy(mb[ownerOffset:], b)
		o, ok := mb.Owner()
		if !ok {
			return
		}
		var again Mailbox
		again.setOwner(o)
		if back, ok := again.Owner(); !ok || back != o {
			t.Fatalf("%+v → %+v, %v", o, back, ok)
		}
	})
}
