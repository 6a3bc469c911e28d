package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lvwatch/lvwatch/internal/testutil"
)

// deployUnit is the agent's systemd unit, and unitCommand its ExecStart=, which
// operators install as is.
const (
	deployUnit  = "../../deploy/lvwatch.service"
	unitBinary  = "/usr/local/bin/lvwatch"
	unitCommand = unitBinary + " agent --config /etc/lvwatch/lvwatch.toml"
)

// TestDeployUnit verifies deploy/lvwatch.service with systemd-analyze, on a copy
// whose ExecStart= runs the binary these tests built (verify checks that it is
// executable). Any warning about the unit fails the test: a mistyped key or a bad
// value makes systemd ignore the line and start the agent without it.
func TestDeployUnit(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		testutil.SkipOrFail(t, "systemd-analyze not found (Debian package systemd; tools/deps.sh installs it)")
	}
	unit, err := os.ReadFile(deployUnit)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(string(unit), "\n")
	var execStarts int
	for i, line := range lines {
		cmd, ok := strings.CutPrefix(line, "ExecStart=")
		if !ok {
			continue
		}
		execStarts++
		if cmd != unitCommand {
			t.Fatalf("%s:%d: ExecStart=%s, want ExecStart=%s", deployUnit, i+1, cmd, unitCommand)
		}
		lines[i] = "ExecStart=" + lvwatchBin + strings.TrimPrefix(cmd, unitBinary)
	}
	if execStarts != 1 {
		t.Fatalf("%s has %d ExecStart= lines, want 1", deployUnit, execStarts)
	}

	// The unit's arguments are ones the agent command accepts (-h stops it there).
	args := append(strings.Fields(strings.TrimPrefix(unitCommand, unitBinary)), "-h")
	if _, stderr, code := lvwatch(t, args...); code != 0 {
		t.Errorf("lvwatch %s: exit %d, want 0: the unit's command line does not parse\n%s", strings.Join(args, " "), code, stderr)
	}

	dir := t.TempDir()
	path := filepath.Join(dir, "lvwatch.service")
	if err := os.WriteFile(path, []byte(strings.Join(lines, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	// Offline: no running systemd is needed, no generators run, no man pages are
	// looked up, and only the unit itself is judged. The unit path is the temp
	// directory alone, so neither the host's units nor its drop-ins take part.
	// Warnings go to stderr whatever the caller's environment says.
	cmd := exec.Command(analyze, "verify", "--man=no", "--generators=no", "--recursive-errors=no", path)
	cmd.Env = append(os.Environ(), "SYSTEMD_UNIT_PATH="+dir, "SYSTEMD_LOG_LEVEL=warning",
		"SYSTEMD_LOG_TARGET=console", "SYSTEMD_LOG_COLOR=no")
	out, err := cmd.CombinedOutput()
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("run %s: %v", analyze, err)
	}
	var flagged int
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		switch {
		case line == "":
		case strings.Contains(line, "lvwatch.service"):
			t.Errorf("systemd-analyze verify: %s", line)
			flagged++
		default:
			t.Logf("systemd-analyze verify: %s", line)
		}
	}
	if err != nil && flagged == 0 {
		t.Errorf("systemd-analyze verify %s: %v\n%s", deployUnit, err, out)
	} else if err != nil {
		t.Errorf("systemd-analyze verify %s: %v", deployUnit, err)
	}
}
