package spm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/mailbox"
	"github.com/lvwatch/lvwatch/internal/testutil"
)

// 16 host processes at once, each asking for its own LV below, at and above its
// size, and all of them for one shared LV: every grant is at least what was asked,
// and each LV ends exactly at the largest size asked ("extend to N").
func TestConcurrentHosts(t *testing.T) {
	const hosts = 16
	d := newTestDomain(t, 1, 0, 1<<30)
	shared := newUUID(t)
	own := make([]string, hosts)
	for i := range own {
		own[i] = newUUID(t)
	}
	d.createLVs(16, append(own, shared)...)
	d.startSPM(Config{})

	procs := make([]*hostProc, hosts)
	for i := range procs {
		procs[i] = d.startHost(i+1,
			hostJob{Domain: d.vg, Volume: own[i], Sizes: []uint64{8}},
			hostJob{Domain: d.vg, Volume: own[i], Sizes: []uint64{16}},
			hostJob{Domain: d.vg, Volume: own[i], Sizes: []uint64{40 + uint64(i)}},
			hostJob{Domain: d.vg, Volume: shared, Sizes: []uint64{20 + uint64(i)}})
	}
	sizes := map[string]uint64{}
	for _, p := range procs {
		for _, r := range p.wait(t) {
			if r.Err != "" || r.Granted < r.SizeMiB {
				t.Errorf("host %d, %s to %d MiB: granted %d, %s", r.Host, r.Volume, r.SizeMiB, r.Granted, r.Err)
			}
			sizes[r.Volume] = max(sizes[r.Volume], r.SizeMiB)
		}
	}
	got := d.sizesMiB()
	for i, lv := range own {
		if got[lv] != 40+uint64(i) {
			t.Errorf("LV %s: %d MiB, want %d", lv, got[lv], 40+i)
		}
	}
	if got[shared] != 20+hosts-1 {
		t.Errorf("shared LV: %d MiB, want %d", got[shared], 20+hosts-1)
	}
	if len(sizes) != hosts+1 {
		t.Errorf("answers for %d volumes, want %d", len(sizes), hosts+1)
	}
	d.vgck()
}

// Hostile requests get a failure reply and one log line with the reason, and the
// VG's metadata is not touched (same seqno).
func TestRefusals(t *testing.T) {
	d := newTestDomain(t, 1, 0, 256<<20)
	lv := newUUID(t)
	d.createLVs(8, lv)
	before := d.readVG().Seqno
	var logs testutil.LogBuffer
	s, err := Start(Config{
		Domains: []DomainConfig{{VG: d.vg, Inbox: d.inbox, Outbox: d.outbox, Devices: d.pvs, MaxLVSize: 220 << 20, Reserve: 64 << 20}},
		Log:     zerolog.New(&logs),
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	h, err := mailbox.OpenHost(mailbox.HostConfig{Inbox: d.inbox, Outbox: d.outbox, HostID: 3, Log: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close(context.Background())
	dom, _ := mailbox.ParseUUID(d.vg)
	vol, _ := mailbox.ParseUUID(lv)
	for _, tc := range []struct {
		name        string
		domain, vol mailbox.UUID
		sizeMiB     uint64
		reason      string
	}{
		{"unknown VG", mailbox.UUID{1}, vol, 16, "not served by this SPM"},
		{"unknown LV", dom, mailbox.UUID{2}, 16, "no such LV"},
		{"above the maximum", dom, vol, 221, "above the maximum LV size"},
		// 255 extents, 8 used, 64 reserved: 192 more fit only in the reserve.
		{"into the reserve", dom, vol, 200, "eat into the VG's reserve"},
	} {
		_, err := h.Extend(context.Background(), tc.domain, tc.vol, tc.sizeMiB)
		if !errors.Is(err, mailbox.ErrExtendFailed) {
			t.Errorf("%s: %v, want a failure reply", tc.name, err)
		}
		if n := len(logs.Lines(tc.reason)); n != 1 {
			t.Errorf("%s: %d log lines with %q, want 1:\n%s", tc.name, n, tc.reason, logs.String())
		}
	}
	if after := d.readVG().Seqno; after != before {
		t.Errorf("VG seqno %d → %d: refused requests changed the metadata", before, after)
	}
	if st := s.Status(); st.Domains[0].Refused != 3 || st.UnknownDomain != 1 {
		t.Errorf("status: %d refused, %d for unknown domains; want 3 and 1", st.Domains[0].Refused, st.UnknownDomain)
	}
}

// vdsmHost plays a host that writes vdsm's bytes by hand: its mailbox, then the events block.
type vdsmHost struct {
	t       *testing.T
	id      int
	in, out *mailbox.Volume
	buf     []byte
}

func openVdsmHost(t *testing.T, d *testDomain, id int) *vdsmHost {
	in, err := mailbox.OpenVolume(d.inbox, mailbox.VolumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	out, err := mailbox.OpenVolumeReadOnly(d.outbox)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); out.Close() })
	return &vdsmHost{t: t, id: id, in: in, out: out, buf: mailbox.AlignedBuffer(mailbox.BlockSize)}
}

// write writes the host's 4 KiB mailbox, then a fresh events block.
func (v *vdsmHost) write(mb []byte) {
	v.t.Helper()
	copy(v.buf, mb)
	if err := v.in.WriteAt(v.buf, int64(v.id)*mailbox.BlockSize); err != nil {
		v.t.Fatal(err)
	}
	var id mailbox.EventID
	copy(id[:], newUUID(v.t))
	ev := mailbox.EncodeEvent(id)
	copy(v.buf, ev[:])
	if err := v.in.WriteAt(v.buf, 0); err != nil {
		v.t.Fatal(err)
	}
}

// reply reads the host's outbox mailbox.
func (v *vdsmHost) reply() mailbox.Mailbox {
	v.t.Helper()
	if err := v.out.ReadAt(v.buf, int64(v.id)*mailbox.BlockSize); err != nil {
		v.t.Fatal(err)
	}
	return mailbox.Mailbox(v.buf)
}

// request writes one extend request in slot 0, sealed as vdsm seals it.
func (v *vdsmHost) request(domain, volume string, sizeMiB uint64) mailbox.Message {
	dom, _ := mailbox.ParseUUID(domain)
	vol, _ := mailbox.ParseUUID(volume)
	m, err := mailbox.Extend{Domain: dom, Volume: vol, SizeMiB: sizeMiB}.Encode()
	if err != nil {
		v.t.Fatal(err)
	}
	var mb mailbox.Mailbox
	mb.SetSlot(0, m)
	mb.Seal()
	v.write(mb[:])
	return m
}

// handshake finishes a reply as vdsm does: CLEAN, the SPM's CLEAN echo, then zeroes.
func (v *vdsmHost) handshake() {
	v.t.Helper()
	var mb mailbox.Mailbox
	mb.SetSlot(0, mailbox.CleanMessage)
	mb.Seal()
	v.write(mb[:])
	testutil.WaitFor(v.t, patience, "the SPM's CLEAN echo", func() bool { r := v.reply(); return r.Slot(0) == mailbox.CleanMessage })
	v.write(make([]byte, mailbox.BlockSize))
}

// A full VG keeps requests with no reply (a vdsm host's outbox slot stays empty),
// serves one that fits meanwhile, and serves the waiting ones, oldest first, when an
// operator adds a PV: the first after one vgextend, the second after another.
func TestFullVGWaitsForSpace(t *testing.T) {
	d := newTestDomain(t, 1, 2, 64<<20)
	a, b, c := newUUID(t), newUUID(t), newUUID(t)
	d.createLVs(8, a, b, c)
	s := d.startSPM(Config{})

	// 63 extents, 24 used: a needs 92, b 64 more; c's 4 fit. One PV more (63) serves a, the next b.
	host := d.startHost(1, hostJob{Domain: d.vg, Volume: a, Sizes: []uint64{100}})
	testutil.WaitFor(t, patience, "a to wait for space", func() bool { return waiting(s) == 1 })
	vdsm := openVdsmHost(t, d, 2)
	req := vdsm.request(d.vg, b, 72)
	testutil.WaitFor(t, patience, "b to wait for space", func() bool { return waiting(s) == 2 })
	small := d.startHost(3, hostJob{Domain: d.vg, Volume: c, Sizes: []uint64{12}})
	if r := small.wait(t); len(r) != 1 || r[0].Err != "" || r[0].Granted != 12 {
		t.Fatalf("a request that fits, behind two that wait: %+v", r)
	}
	if r := vdsm.reply(); r.Slot(0).Kind() != mailbox.KindEmpty {
		t.Fatalf("a vdsm host got a reply while its request waits for space: % x", r.Slot(0))
	}
	st := s.Status().Domains[0]
	if st.WaitedForSpace != 2 || st.WaitingOnSpace[0].Volume != a || st.WaitingOnSpace[1].Volume != b {
		t.Errorf("status while waiting: %+v", st)
	}

	d.env.MustRun("vgextend", "-q", d.vg, d.spare[0])
	if r := host.wait(t); len(r) != 1 || r[0].Err != "" || r[0].Granted != 100 {
		t.Fatalf("after the first vgextend, a: %+v", r)
	}
	// The snapshot is published after the reply went out.
	testutil.WaitFor(t, patience, "b alone to wait after the first vgextend", func() bool { return waiting(s) == 1 })
	if r := vdsm.reply(); r.Slot(0).Kind() != mailbox.KindEmpty {
		t.Fatalf("b was answered before it fits: % x", r.Slot(0))
	}
	d.env.MustRun("vgextend", "-q", d.vg, d.spare[1])
	testutil.WaitFor(t, patience, "b's reply", func() bool { r := vdsm.reply(); return r.Slot(0) != (mailbox.Message{}) })
	if r := vdsm.reply(); r.Slot(0) != req {
		t.Fatalf("b's reply is not its request re-encoded with its size:\n% x\n% x", r.Slot(0), req)
	}
	vdsm.handshake()
	if got := d.sizesMiB(); got[a] != 100 || got[b] != 72 || got[c] != 12 {
		t.Errorf("sizes %v", got)
	}
	d.vgck()
}

// vdsm's own bytes: its request block gets exactly vdsm's reply block, and the
// handshake ends clean.
func TestVdsmInterop(t *testing.T) {
	const (
		domain = "8adbc85e-e554-4ae0-b318-8a5465fe5fe1"
		volume = "d772f1c6-3ebb-43c3-a42e-73fcd8255a5f"
	)
	// The reference blocks name their domain.
	d := newNamedTestDomain(t, domain, 1, 0, 8<<30)
	d.createLVs(1024, volume)
	d.startSPM(Config{})
	vdsm := openVdsmHost(t, d, 7)
	ref := func(name string) []byte {
		b, err := os.ReadFile(filepath.Join("testdata", "vdsm", name))
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	vdsm.write(ref("host7-request-mailbox.bin"))
	want := ref("host7-reply-mailbox.bin")
	testutil.WaitFor(t, patience, "the reply", func() bool { r := vdsm.reply(); return r.Slot(0) != (mailbox.Message{}) })
	if r := vdsm.reply(); !bytes.Equal(r[:], want) {
		t.Fatalf("reply mailbox differs from vdsm's:\n% x\n% x", r[:128], want[:128])
	}
	vdsm.write(ref("host7-clean-mailbox.bin"))
	testutil.WaitFor(t, patience, "the CLEAN echo", func() bool { r := vdsm.reply(); return r.Slot(0) == mailbox.CleanMessage })
	if got := d.sizesMiB()[volume]; got != 5120 {
		t.Errorf("volume %d MiB, want 5120", got)
	}
}

// kill -9 of the SPM process at random points of a stream of extends, 50 times, a
// new SPM each time. After every kill, once the lvm shell the SPM left behind has
// finished its command (it exits when its stdin closes), no LV is smaller than
// before nor bigger than the most asked for it. Some kills must hit an extend under
// way: the metadata changed between the SPM's death and its lvm's exit, which only
// that orphaned lvm can have done. In the end every request is answered once (the
// hosts got one answer each; the last SPM counted one answer per request it took
// and wrote no more replies than requests), each LV has the most asked for it, and
// vgck finds the VG clean.
func TestKillSPM(t *testing.T) {
	const (
		rounds = 50
		lvs    = 8
		steps  = 40
	)
	d := newTestDomain(t, 1, 0, 1<<30)
	names := make([]string, lvs)
	sizes := make([][]uint64, lvs) // LV k asks 5+k … 5+k+steps-1: each LV its own largest
	most := map[string]uint64{}
	for k := range names {
		names[k] = newUUID(t)
		for i := range steps {
			sizes[k] = append(sizes[k], 5+uint64(k+i))
		}
		most[names[k]] = sizes[k][steps-1]
	}
	d.createLVs(4, names...)
	var hosts []*hostProc
	for h := range lvs / 2 {
		hosts = append(hosts, d.startHost(h+1,
			hostJob{Domain: d.vg, Volume: names[2*h], Sizes: sizes[2*h]},
			hostJob{Domain: d.vg, Volume: names[2*h+1], Sizes: sizes[2*h+1]}))
	}
	logPath := filepath.Join(t.TempDir(), "spm.log")
	check := func(when string, before, now map[string]uint64) {
		t.Helper()
		for _, n := range names {
			if now[n] < before[n] || now[n] > most[n] {
				t.Fatalf("%s: LV %s: %d MiB after %d MiB (asked at most %d)", when, n, now[n], before[n], most[n])
			}
		}
	}
	prev := d.sizesMiB()
	busy, grew := 0, 0
	// Past 50 rounds only while no kill has hit an extend yet, with a wider
	// window: on a loaded machine the SPM may take longer to get to work.
	for round := 0; round < rounds || busy == 0 && round < 2*rounds; round++ {
		p := d.startSPMProc(Config{}, logPath)
		// A random point: the SPM is mid-scan, mid-lvextend or between replies.
		window := 30
		if busy == 0 && round >= rounds/2 {
			window = 100
		}
		time.Sleep(time.Duration(rand.IntN(window)) * time.Millisecond)
		shells := p.children(t)
		p.kill()
		atKill := d.readVG()
		waitGone(t, shells)
		settled := d.readVG()
		if settled.Seqno != atKill.Seqno {
			busy++ // the SPM died with an lvextend under way, and that lvextend committed
		}
		now := d.sizesMiB()
		check(fmt.Sprintf("round %d", round), prev, now)
		for _, n := range names {
			if now[n] > prev[n] {
				grew++
			}
		}
		prev = now
	}
	t.Logf("%d SPMs killed mid-extend; %d LV extensions across the rounds", busy, grew)
	if busy == 0 {
		t.Errorf("no SPM of %d was killed with an extend under way: the kills tested nothing", 2*rounds)
	}
	p := d.startSPMProc(Config{}, logPath)
	defer p.kill()
	for h, proc := range hosts {
		res := proc.wait(t)
		answers := map[hostResult]int{}
		for _, r := range res {
			if r.Err != "" || r.Granted < r.SizeMiB {
				t.Errorf("%s to %d MiB: granted %d, %s", r.Volume, r.SizeMiB, r.Granted, r.Err)
			}
			answers[hostResult{Volume: r.Volume, SizeMiB: r.SizeMiB}]++
		}
		for _, k := range []int{2 * h, 2*h + 1} {
			for _, sz := range sizes[k] {
				if n := answers[hostResult{Volume: names[k], SizeMiB: sz}]; n != 1 {
					t.Errorf("host %d, %s to %d MiB: %d answers, want 1", h+1, names[k], sz, n)
				}
			}
		}
		if len(res) != 2*steps {
			t.Errorf("host %d: %d answers, want %d", h+1, len(res), 2*steps)
		}
	}
	// The SPM's side: the last SPM (the killed ones cannot tell) answered each
	// request it took once, and wrote no more replies than it found requests.
	st := p.stop()
	for _, ds := range st.Domains {
		c := ds.Counters
		if answered := c.Extended + c.AlreadyLarge + c.Refused + c.Failed + c.Withdrawn; answered != c.Requests {
			t.Errorf("the last SPM, domain %s: %d answers counted for %d requests: %+v", ds.VG, answered, c.Requests, c)
		}
	}
	for _, ms := range st.Mailboxes {
		if ms.Stats.Replies > ms.Stats.Requests {
			t.Errorf("the last SPM's mailbox: %d replies written for %d requests found", ms.Stats.Replies, ms.Stats.Requests)
		}
	}
	t.Logf("the last SPM: %+v; its mailbox: %+v", st.Domains[0].Counters, st.Mailboxes[0].Stats)
	final := d.sizesMiB()
	check("at the end", prev, final)
	for _, n := range names {
		if final[n] != most[n] {
			t.Errorf("LV %s: %d MiB, want %d", n, final[n], most[n])
		}
	}
	d.vgck()
	if t.Failed() {
		logs, _ := os.ReadFile(logPath)
		t.Logf("SPM logs:\n%s", logs)
	}
}

// With no devices configured the SPM finds the VG's PVs by scanning as lvm would
// (lvm.conf's filters), runs lvm without --devices, and finds a PV an operator
// adds by scanning again: a request waiting for space is served.
func TestScanForPVs(t *testing.T) {
	d := newTestDomain(t, 1, 1, 64<<20)
	lv := newUUID(t)
	d.createLVs(8, lv)
	cfg := d.config()
	cfg.Devices = nil
	s := d.startSPM(Config{Domains: []DomainConfig{cfg}})
	host := d.startHost(1, hostJob{Domain: d.vg, Volume: lv, Sizes: []uint64{16, 100}})
	testutil.WaitFor(t, patience, "the second extend to wait for space", func() bool { return waiting(s) == 1 })
	if got := s.Status().Domains[0].Devices; !slices.Equal(got, d.pvs) {
		t.Errorf("devices found by scanning %v, want %v", got, d.pvs)
	}
	d.env.MustRun("vgextend", "-q", d.vg, d.spare[0])
	for _, r := range host.wait(t) {
		if r.Err != "" || r.Granted != r.SizeMiB {
			t.Errorf("extend to %d MiB: granted %d, %s", r.SizeMiB, r.Granted, r.Err)
		}
	}
	testutil.WaitFor(t, patience, "the new PV among the domain's devices", func() bool {
		return slices.Equal(s.Status().Domains[0].Devices, append(slices.Clone(d.pvs), d.spare[0]))
	})
	d.vgck()
}

// A host of the SPM's own process linked by AddLocal is served without the SPM
// polling: the polls here are an hour apart, so only the in-process wake-ups
// serve the requests.
func TestAddLocal(t *testing.T) {
	d := newTestDomain(t, 1, 0, 64<<20)
	lv := newUUID(t)
	d.createLVs(8, lv)
	s := d.startSPM(Config{EventPollMin: time.Hour, EventPollMax: time.Hour, ScanInterval: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), patience)
	defer cancel()
	h, err := mailbox.OpenHost(mailbox.HostConfig{Inbox: d.inbox, Outbox: d.outbox, HostID: 7, PollMin: time.Hour, PollMax: time.Hour,
		Log: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close(ctx)
	if err := s.AddLocal(newUUID(t), h); err == nil {
		t.Error("AddLocal for a domain the SPM does not serve: no error")
	}
	if err := s.AddLocal(d.vg, h); err != nil {
		t.Fatal(err)
	}
	dom, _ := mailbox.ParseUUID(d.vg)
	vol, _ := mailbox.ParseUUID(lv)
	for _, sz := range []uint64{12, 20} {
		if got, err := h.Extend(ctx, dom, vol, sz); err != nil || got != sz {
			t.Fatalf("extend to %d MiB through the in-process link: %d, %v", sz, got, err)
		}
	}
	// The CLEAN handshakes are the SPM's polls' to see (the link wakes it for
	// requests only): Close does not wait an hour for them.
	closeCtx, cancelClose := context.WithTimeout(ctx, time.Second)
	defer cancelClose()
	if err := h.Close(closeCtx); err != nil {
		t.Fatal(err)
	}
	s.RemoveLocal(h)
	if got := d.sizesMiB()[lv]; got != 20 {
		t.Errorf("LV %d MiB, want 20", got)
	}
}
