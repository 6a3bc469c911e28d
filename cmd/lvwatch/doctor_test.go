package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
)

// lvwatch doctor shows a running watch's pins as held by it, keeps them on
// --remove while it runs, and once it has exited with --keep shows them as a
// leftover and removes them, detaching the program.
func TestDoctorCommand(t *testing.T) {
	_, watcher, _, pins := startWatch(t, "--keep")

	out := doctor(t, pins)
	for _, want := range []string{fmt.Sprintf("held by pid %d (%s watch", watcher.Process.Pid, lvwatchBin), "block_bio_queue", "armings  1 device, 1 armed"} {
		if !strings.Contains(out, want) {
			t.Errorf("doctor on a running watch lacks %q:\n%s", want, out)
		}
	}
	if out := doctor(t, "--remove", pins); !strings.Contains(out, "kept: a running watcher holds it") {
		t.Errorf("doctor --remove on a running watch:\n%s", out)
	}
	if _, err := os.Stat(pins); err != nil {
		t.Fatalf("doctor --remove took a running watch's pins: %v", err)
	}

	watcher.Process.Signal(syscall.SIGTERM)
	if err := watcher.Wait(); err != nil {
		t.Fatalf("watch after SIGTERM: %v", err)
	}
	var report doctorReport
	if err := json.Unmarshal([]byte(doctor(t, "--json", pins)), &report); err != nil {
		t.Fatal(err)
	}
	if len(report.Pins) != 1 || report.Pins[0].Locked || report.Pins[0].Link == nil || report.Pins[0].Armings != 1 {
		t.Fatalf("doctor --json after watch --keep exited: %+v, want one unheld directory with its link and arming", report.Pins)
	}
	if out := doctor(t, pins); !strings.Contains(out, "no process holds it: a leftover") {
		t.Errorf("doctor on a leftover:\n%s", out)
	}
	if out := doctor(t, "--remove", pins); !strings.Contains(out, "removed: the program is detached") {
		t.Errorf("doctor --remove on a leftover:\n%s", out)
	}
	if _, err := os.Stat(pins); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after doctor --remove: %v", pins, err)
	}
}

// doctor runs lvwatch doctor with args and returns its output, failing the test
// on a non-zero exit.
func doctor(t *testing.T, args ...string) string {
	t.Helper()
	stdout, stderr, code := lvwatch(t, append([]string{"doctor"}, args...)...)
	if code != 0 {
		t.Fatalf("lvwatch doctor %q: exit %d: %s", args, code, stderr)
	}
	return stdout
}
