package spm

import (
	"bytes"
	"context"
	"io"
	"strings"
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
