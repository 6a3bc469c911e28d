package spm

import (
	"bytes"
	"io"
	"strings"
	"testing"

	"github.com/rs/zerolog"
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
