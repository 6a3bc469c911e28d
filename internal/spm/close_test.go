package spm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/lvwatch/lvwatch/internal/mailbox"
	"github.com/lvwatch/lvwatch/internal/process"
	"github.com/lvwatch/lvwatch/internal/testutil"
)

// lockVG takes the VG's lvm lock as an operator's command would (lvm's file lock
// in lvmtest's locking_dir): lvextend blocks until unlock.
func (d *testDomain) lockVG() (unlock func()) {
	d.t.Helper()
	f, err := os.OpenFile(filepath.Join(d.env.Dir, "lock", "V_"+d.vg), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		d.t.Fatal(err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		d.t.Fatal(err)
	}
	unlock = sync.OnceFunc(func() { unix.Flock(int(f.Fd()), unix.LOCK_UN); f.Close() })
	d.t.Cleanup(unlock) // a failed test must not leave lvm waiting for the lock
	return unlock
}

// Close while an lvextend runs (held up by the VG lock) with more requests queued
// behind it: the running lvextend finishes, no other starts, every request is
// answered (dropped: withdrawn), and a second Close is harmless.
func TestCloseStopsTheRound(t *testing.T) {
	d := newTestDomain(t, 1, 0, 256<<20)
	lvs := []string{newUUID(t), newUUID(t), newUUID(t), newUUID(t)}
	d.createLVs(8, lvs...)
	unlock := d.lockVG()
	s := d.startSPM(Config{})
	var jobs []hostJob
	for _, lv := range lvs {
		jobs = append(jobs, hostJob{Domain: d.vg, Volume: lv, Sizes: []uint64{16}})
	}
	d.startHost(1, jobs...)
	testutil.WaitFor(t, patience, "one lvextend under way and every request queued", func() bool {
		st := s.Status().Domains[0]
		return st.LVMCommands == 1 && st.Requests == uint64(len(lvs))
	})
	closed := make(chan error, 1)
	go func() { closed <- s.Close() }()
	dom := s.domains[0]
	testutil.WaitFor(t, patience, "the worker told to stop", dom.stopping)
	unlock()
	if err := <-closed; err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	st := s.Status().Domains[0]
	if st.LVMCommands != 1 {
		t.Errorf("%d LVM commands, want the one running at Close", st.LVMCommands)
	}
	grown := 0
	for _, lv := range lvs {
		if d.sizesMiB()[lv] == 16 {
			grown++
		}
	}
	if grown != 1 {
		t.Errorf("%d LVs extended, want 1", grown)
	}
	// Close withdrew them all; the one extended counts as extended (its reply is
	// dropped), the others as withdrawn: each request once.
	if st.Extended != 1 || st.Withdrawn != uint64(len(lvs)-1) {
		t.Errorf("status %+v: want 1 extended, %d withdrawn", st.Counters, len(lvs)-1)
	}
}

// Domains naming one mailbox by other paths (a symlink here; /dev/VG/inbox and
// /dev/mapper/VG-inbox on a host) share one mailbox reader; one inbox with two
// outboxes is refused.
func TestMailboxIdentity(t *testing.T) {
	d := newTestDomain(t, 1, 0, 64<<20)
	dir := t.TempDir()
	linkIn, linkOut := filepath.Join(dir, "in"), filepath.Join(dir, "out")
	for old, link := range map[string]string{d.inbox: linkIn, d.outbox: linkOut} {
		if err := os.Symlink(old, link); err != nil {
			t.Fatal(err)
		}
	}
	other := DomainConfig{VG: newUUID(t), Inbox: linkIn, Outbox: linkOut, Devices: d.pvs}
	s := d.startSPM(Config{Domains: []DomainConfig{d.config(), other}})
	if st := s.Status(); len(st.Mailboxes) != 1 || len(st.Mailboxes[0].Domains) != 2 {
		t.Errorf("two domains on one mailbox by two paths: %+v", st.Mailboxes)
	}
	s.Close()

	elsewhere := filepath.Join(dir, "outbox2")
	if err := os.WriteFile(elsewhere, make([]byte, 4096), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string]struct {
		cfg  DomainConfig
		want string
	}{
		"one inbox, two outboxes":   {DomainConfig{VG: other.VG, Inbox: linkIn, Outbox: elsewhere}, "already paired"},
		"one outbox, two inboxes":   {DomainConfig{VG: other.VG, Inbox: elsewhere, Outbox: linkOut}, "already serves another inbox"},
		"inbox and outbox swapped":  {DomainConfig{VG: other.VG, Inbox: linkOut, Outbox: linkIn}, "of the other kind"},
		"outbox is another's inbox": {DomainConfig{VG: other.VG, Inbox: elsewhere, Outbox: linkIn}, "of the other kind"},
		"inbox without outbox":      {DomainConfig{VG: other.VG, Inbox: linkIn}, "outbox"},
	} {
		s, err := Start(Config{Domains: []DomainConfig{d.config(), bad.cfg}})
		if err == nil {
			s.Close()
			t.Errorf("%s: started", name)
		} else if !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%s: %v, want an error with %q", name, err, bad.want)
		}
	}
}

// lvm's stock backup settings, a devices file listing nothing and a $HOME, as on a
// host: the SPM's command-line settings keep the archives bounded (vdsm's
// retain_min 50, retain_days 0), the devices file does not hide the domain's PVs,
// and no .lvm_history is written.
func TestHostLVMConfig(t *testing.T) {
	const lvs, steps = 6, 11 // 66 extends: more than the 50 archives kept
	d := newTestDomain(t, 1, 0, 512<<20)
	names := make([]string, lvs)
	for i := range names {
		names[i] = newUUID(t)
	}
	d.createLVs(4, names...)
	confPath := filepath.Join(d.env.Dir, "lvm.conf")
	orig, err := os.ReadFile(confPath)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(d.env.Dir, "archive")
	for _, dir := range []string{archive, filepath.Join(d.env.Dir, "backup"), filepath.Join(d.env.Dir, "devices")} {
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(d.env.Dir, "devices", "system.devices"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	conf := strings.Replace(string(orig), "backup {\n\tbackup = 0\n\tarchive = 0\n}",
		"backup {\n\tbackup = 1\n\tbackup_dir = \""+d.env.Dir+"/backup\"\n\tarchive = 1\n\tarchive_dir = \""+archive+
			"\"\n\tretain_min = 10\n\tretain_days = 30\n}", 1)
	conf = strings.Replace(conf, "use_devicesfile = 0", "use_devicesfile = 1", 1)
	if conf == string(orig) || !strings.Contains(conf, "use_devicesfile = 1") {
		t.Fatalf("lvmtest's lvm.conf changed shape:\n%s", orig)
	}
	if err := os.WriteFile(confPath, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	// Before lvmtest's cleanup (which needs its own configuration back).
	t.Cleanup(func() { os.WriteFile(confPath, orig, 0o600) })

	home := t.TempDir()
	t.Setenv("HOME", home)
	d.startSPM(Config{})
	var jobs []hostJob
	for _, n := range names {
		var sizes []uint64
		for i := range steps {
			sizes = append(sizes, 5+uint64(i))
		}
		jobs = append(jobs, hostJob{Domain: d.vg, Volume: n, Sizes: sizes})
	}
	for _, r := range d.startHost(1, jobs...).wait(t) {
		if r.Err != "" || r.Granted < r.SizeMiB {
			t.Errorf("%s to %d MiB: granted %d, %s", r.Volume, r.SizeMiB, r.Granted, r.Err)
		}
	}
	files, err := filepath.Glob(filepath.Join(archive, d.vg+"_*.vg"))
	if err != nil {
		t.Fatal(err)
	}
	// lvm's shell keeps no history of the SPM's commands in $HOME (nor pays for it).
	if _, err := os.Stat(filepath.Join(home, ".lvm_history")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the lvm shell wrote its history in $HOME: %v", err)
	}
	// lvm expires down to retain_min after writing the new archive.
	if len(files) == 0 || len(files) > 51 {
		t.Errorf("%d archive files after %d extends, want 1..51", len(files), lvs*steps)
	}
}

func TestEmptyDevices(t *testing.T) {
	if _, err := (DomainConfig{VG: "8adbc85e-e554-4ae0-b318-8a5465fe5fe1", Devices: []string{}}).withDefaults(); err == nil {
		t.Error("devices = []: no error")
	}
}

// The lvm shell killed while its lvextend waits for the VG lock: the SPM finds the
// LV not extended in the metadata and runs the command once more in a new shell;
// the host gets its grant, not a failure.
func TestShellKilledMidCommand(t *testing.T) {
	d := newTestDomain(t, 1, 0, 128<<20)
	lv := newUUID(t)
	d.createLVs(4, lv)
	unlock := d.lockVG()
	s := d.startSPM(Config{})
	host := d.startHost(1, hostJob{Domain: d.vg, Volume: lv, Sizes: []uint64{16}})
	shell := waitForLockedShell(t, s, 1)
	if err := unix.Kill(shell, unix.SIGKILL); err != nil {
		t.Fatal(err)
	}
	waitForLockedShell(t, s, 2)
	unlock()
	if r := host.wait(t); len(r) != 1 || r[0].Err != "" || r[0].Granted != 16 {
		t.Fatalf("after the shell was killed mid-command: %+v", r)
	}
	if st := s.Status().Domains[0]; st.Extended != 1 || st.Failed != 0 || st.LVMCommands != 2 {
		t.Errorf("counters %+v: want 1 extended after 2 LVM commands", st.Counters)
	}
	if got := d.sizesMiB()[lv]; got != 16 {
		t.Errorf("LV %d MiB, want 16", got)
	}
	d.vgck()
}

// A host that stops (clearing its mailbox, as a restarted host does) while its
// lvextend waits for the VG lock withdraws the request: the lvextend still runs to
// its end (the shell is not killed), and the request counts once, as extended,
// its answer dropped.
func TestWithdrawnDuringLVExtend(t *testing.T) {
	d := newTestDomain(t, 1, 0, 128<<20)
	lv := newUUID(t)
	d.createLVs(4, lv)
	unlock := d.lockVG()
	s := d.startSPM(Config{})
	h, err := mailbox.OpenHost(mailbox.HostConfig{Inbox: d.inbox, Outbox: d.outbox, HostID: 3, Log: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	dom, _ := mailbox.ParseUUID(d.vg)
	vol, _ := mailbox.ParseUUID(lv)
	extended := make(chan error, 1)
	go func() { _, err := h.Extend(context.Background(), dom, vol, 16); extended <- err }()
	shell := waitForLockedShell(t, s, 1)
	if err := h.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-extended; !errors.Is(err, mailbox.ErrClosed) {
		t.Fatalf("Extend of a host closed under it: %v", err)
	}
	testutil.WaitFor(t, patience, "the SPM to see the request withdrawn", func() bool { return s.Status().Mailboxes[0].Stats.Withdrawn == 1 })
	unlock()
	testutil.WaitFor(t, patience, "the lvextend to end", func() bool { return s.Status().Domains[0].Extended == 1 })
	if process.Exited(shell) {
		t.Error("the lvm shell was stopped")
	}
	if st := s.Status().Domains[0]; st.Withdrawn != 0 || st.Failed != 0 || st.LVMCommands != 1 {
		t.Errorf("counters %+v: want the request counted once, as extended", st.Counters)
	}
	if got := d.sizesMiB()[lv]; got != 16 {
		t.Errorf("LV %d MiB, want 16: the lvextend under way must finish", got)
	}
}

// waitForLockedShell waits for the SPM's commands-th LVM command to wait for the
// VG lock in an lvm shell, and returns that shell's pid.
func waitForLockedShell(t *testing.T, s *SPM, commands uint64) int {
	t.Helper()
	var shell int
	testutil.WaitFor(t, patience, fmt.Sprintf("LVM command %d to wait for the VG lock", commands), func() bool {
		if s.Status().Domains[0].LVMCommands != commands {
			return false
		}
		for _, pid := range lvmShells(t) {
			if inFlock(pid) {
				shell = pid
				return true
			}
		}
		return false
	})
	return shell
}
