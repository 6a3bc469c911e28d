package process

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

func TestStartTime(t *testing.T) {
	start, err := StartTime(os.Getpid())
	if err != nil || start == 0 {
		t.Fatalf("own start time: %d, %v", start, err)
	}
	if !Alive(os.Getpid(), start) || !Alive(os.Getpid(), 0) || Alive(os.Getpid(), start+1) {
		t.Error("Alive does not tell this process by its start time")
	}
	odd := "42 (a) b (c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 777 19 20\n"
	if got, err := ParseStartTime([]byte(odd)); err != nil || got != 777 {
		t.Errorf("comm with parentheses: %d, %v", got, err)
	}
	for _, bad := range []string{"", "42 (a", "42 (a) S 1 2", "42 (a) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 x"} {
		if _, err := ParseStartTime([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func TestExited(t *testing.T) {
	if Exited(os.Getpid()) {
		t.Error("this process counts as exited")
	}
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	if !Exited(cmd.Process.Pid) { // reaped: gone, unless the pid was reused at once
		if Alive(cmd.Process.Pid, 0) {
			t.Skip("pid reused")
		}
		t.Error("a reaped process does not count as exited")
	}
	for stat, want := range map[string]byte{"42 (a) b (c) Z 1 2": 'Z', "7 (x) S": 'S'} {
		if got, err := ParseState([]byte(stat)); err != nil || got != want {
			t.Errorf("%q: state %q, %v; want %q", stat, got, err, want)
		}
	}
	for _, bad := range []string{"", "42 (a", "42 (a)", "42 (a) SS 1"} {
		if _, err := ParseState([]byte(bad)); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

// Any /proc stat line: no panic, and a start time or state only when the fields are there.
func FuzzParseStartTime(f *testing.F) {
	if b, err := os.ReadFile("/proc/self/stat"); err == nil {
		f.Add(string(b))
	}
	f.Add("42 (a) b (c) S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 777 19 20")
	f.Add("1 (x")
	f.Fuzz(func(t *testing.T, s string) {
		if _, err := ParseStartTime([]byte(s)); err == nil && !strings.Contains(s, ")") {
			t.Fatalf("parsed %q without a command name", s)
		}
		if _, err := ParseState([]byte(s)); err == nil && !strings.Contains(s, ")") {
			t.Fatalf("state parsed from %q without a command name", s)
		}
	})
}
