package spm

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/mailbox"
)

// A line longer than the scanner takes stops the logging, not the reading: the
// writer (lvm) never blocks on a full pipe.
func TestLineTailDrains(t *testing.T) {
	r, w := io.Pipe()
	done := make(chan struct{})
	var tail lineTail
	go func() { tail.collect(r, zerolog.Nop()); close(done) }()
	if _, err := io.WriteString(w, "first\n"+strings.Repeat("x", 70<<10)+"\nsecond\n"); err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(bytes.Repeat([]byte("y"), maxLineSize+1)); err != nil {
		t.Fatal(err) // blocks forever (the test times out) unless collect drains
	}
	if _, err := io.WriteString(w, "\nafter\n"); err != nil {
		t.Fatal(err)
	}
	w.Close()
	<-done
	if got := tail.String(); !strings.HasPrefix(got, "first; xxx") || !strings.HasSuffix(got, "; second") {
		t.Errorf("tail %.40q…%q: want first, the 70 KiB line and second", got, got[max(0, len(got)-20):])
	}
}

// The lvm shell killed between two requests: the next request is granted, whether
// the SPM saw the shell exit or finds out when its write fails.
func TestShellKilledBetweenRequests(t *testing.T) {
	d := newTestDomain(t, 1, 0, 128<<20)
	lv := newUUID(t)
	d.createLVs(4, lv)
	s := d.startSPM(Config{})
	h, err := mailbox.OpenHost(mailbox.HostConfig{Inbox: d.inbox, Outbox: d.outbox, HostID: 5, Log: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close(context.Background())
	dom, _ := mailbox.ParseUUID(d.vg)
	vol, _ := mailbox.ParseUUID(lv)
	extend := func(sizeMiB uint64) {
		t.Helper()
		if got, err := h.Extend(context.Background(), dom, vol, sizeMiB); err != nil || got != sizeMiB {
			t.Fatalf("extend to %d MiB: %d, %v", sizeMiB, got, err)
		}
	}
	sh := s.domains[0].shell
	kill := func(unnoticed bool) {
		t.Helper()
		sh.mu.Lock()
		defer sh.mu.Unlock()
		if sh.cmd == nil {
			t.Fatal("no lvm shell running")
		}
		sh.cmd.Process.Kill()
		<-sh.exited
		if unnoticed {
			sh.exited = make(chan struct{}) // as if it died just now: the write finds out
		}
	}
	extend(8)
	kill(false)
	extend(12)
	kill(true)
	extend(16)
	if got := d.sizesMiB()[lv]; got != 16 {
		t.Errorf("LV %d MiB, want 16", got)
	}
	if st := s.Status().Domains[0]; st.Failed != 0 || st.Extended != 3 {
		t.Errorf("counters %+v", st.Counters)
	}
}

// fakeLVM writes a stand-in for lvm's shell that answers each command line with
// a status row naming name (the command's own name when name is "") and return
// code ret, and records its pid. Only for what real lvm cannot be made to do.
func fakeLVM(t *testing.T, name, ret string) (path, pidFile string) {
	dir := t.TempDir()
	path, pidFile = filepath.Join(dir, "lvm"), filepath.Join(dir, "pid")
	script := `#!/bin/sh
echo $$ >> ` + pidFile + `
while read -r cmd rest; do
	name=` + name + `
	printf '{"log":[{"log_type":"status","log_context":"shell","log_object_type":"cmd","log_object_name":"%s","log_message":"x","log_ret_code":"` + ret + `"}]}\n' "${name:-$cmd}" >&3
done
`
	if err := os.WriteFile(path, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return path, pidFile
}

func pids(t *testing.T, pidFile string) []int {
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, f := range strings.Fields(string(b)) {
		n, _ := strconv.Atoi(f)
		out = append(out, n)
	}
	return out
}

// A report for another command than the one sent is a protocol error: the shell
// is replaced before the next command.
func TestReportOfAnotherCommand(t *testing.T) {
	path, pidFile := fakeLVM(t, "vgs", "1")
	sh := newShell(path, zerolog.New(zerolog.NewTestWriter(t)))
	defer sh.Close()
	for range 2 {
		if err := sh.run("lvextend", "vg/lv"); !errors.Is(err, errShellDied) {
			t.Fatalf("lvextend answered as vgs: %v", err)
		}
	}
	if n := len(pids(t, pidFile)); n != 2 {
		t.Errorf("%d lvm shells for two commands, want a new one after the protocol error", n)
	}
}

// A probe that fails at Start leaves no lvm running.
func TestStartProbeFails(t *testing.T) {
	path, pidFile := fakeLVM(t, "", "5")
	dir := t.TempDir()
	in, out := filepath.Join(dir, "in"), filepath.Join(dir, "out")
	for _, p := range []string{in, out} {
		if err := os.WriteFile(p, nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	_, err := Start(Config{LVM: path, Log: zerolog.New(zerolog.NewTestWriter(t)),
		Domains: []DomainConfig{{VG: "8adbc85e-e554-4ae0-b318-8a5465fe5fe1", Inbox: in, Outbox: out, Devices: []string{"/dev/x"}}}})
	if err == nil {
		t.Fatal("started with an lvm that fails every command")
	}
	for _, pid := range pids(t, pidFile) {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("lvm shell %d still there after Start failed: %v", pid, err)
		}
	}
}
