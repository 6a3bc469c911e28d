package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lvwatch/lvwatch/internal/testvm/guest"
)

// A plan is what to run, the same on a host with device-mapper and in the guest,
// where it travels as JSON in the initramfs.
type plan struct {
	Nonce   string        // marks the runner's own lines so that test output cannot fake them
	Timeout time.Duration // for all test binaries together
	Env     []string      // added to each test binary's environment
	Modules []string      // kernel modules the guest loads first
	Mounts  []guest.Mount // what the guest mounts besides proc, sysfs, devtmpfs, /tmp and /run
	Tests   []testBinary
	Script  *guestScript // run instead of the tests (-script)
}

// bootedSystemMounts are what a booted system (systemd) mounts and a test
// guest leaves to the code under test, which mounts them when missing: -script
// gets them ready, as an agent would find them.
var bootedSystemMounts = []guest.Mount{
	{FSType: "bpf", Target: "/sys/fs/bpf", Data: "mode=700"},
	{FSType: "tracefs", Target: "/sys/kernel/tracing"},
	{FSType: "tmpfs", Target: "/dev/shm", Data: "mode=1777"},
	{FSType: "devpts", Target: "/dev/pts", Data: "gid=5,mode=620,ptmxmode=000"},
}

// guestScript is a shell script the guest runs as root with sh.
type guestScript struct {
	Path string   // in the guest
	Args []string // $1...
	Dir  string   // working directory
}

// scriptExitCode is vmtest's exit code when the script's own is unknown: the
// guest crashed, timed out, or could not start it.
const scriptExitCode = 125

// scriptExitMarker, after the marker prefix, reports the script's exit code:
// "script exit N in 1.2s".
var scriptExitMarker = regexp.MustCompile(`^script exit (\d+) in `)

// testBinary is one package's compiled tests.
type testBinary struct {
	Package string   // import path, for the reader
	Binary  string   // absolute path of the .test file
	Dir     string   // working directory: the package's source dir, or its copy in the guest
	Args    []string // -test.* flags
}

// markerPrefix starts every line the runner prints about the run itself.
func (p *plan) markerPrefix() string { return "vmtest[" + p.Nonce + "]: " }

// run runs each test binary in turn with its output on out, prints a marker
// line with each one's exit code and a final one with the overall result, and
// returns that result: 0 when every binary passed.
func (p *plan) run(ctx context.Context, out io.Writer) int {
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	result := 0
	for _, tb := range p.Tests {
		start := time.Now()
		code := tb.run(ctx, p.Env, out)
		if code != 0 {
			result = 1
		}
		fmt.Fprintf(out, "%s%s exit %d in %.1fs\n", p.markerPrefix(), tb.Package, code, time.Since(start).Seconds())
	}
	if ctx.Err() != nil {
		fmt.Fprintf(out, "%stests exceeded the %v limit\n", p.markerPrefix(), p.Timeout)
		result = 1
	}
	fmt.Fprintf(out, "%sdone %d\n", p.markerPrefix(), result)
	return result
}

// runScript runs the plan's script with its output on out, then prints a
// marker line with its exit code (128+N for a script killed by signal N, as
// shells report it), and returns that code. A script still running at the
// plan's time limit is killed with everything it started, and the marker
// line says so instead.
func (p *plan) runScript(ctx context.Context, out io.Writer) int {
	s := p.Script
	ctx, cancel := context.WithTimeout(ctx, p.Timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "sh", append([]string{s.Path}, s.Args...)...)
	cmd.Dir = s.Dir
	cmd.Env = append(os.Environ(), p.Env...)
	cmd.Stdout, cmd.Stderr = out, out
	// Its own process group, so that the time limit ends what it started too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	// When out is not a file, a daemon the script left behind must not keep
	// the output pipe, and so the run, open.
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start).Seconds()
	var ws syscall.WaitStatus
	if cmd.ProcessState != nil {
		ws = cmd.ProcessState.Sys().(syscall.WaitStatus)
	}
	var code int
	switch {
	case cmd.ProcessState == nil:
		fmt.Fprintf(out, "%sscript did not start: %v\n", p.markerPrefix(), err)
		return scriptExitCode
	case ws.Exited():
		code = ws.ExitStatus()
	case ws.Signaled() && ctx.Err() != nil:
		fmt.Fprintf(out, "%sscript killed: still running after the %v limit\n", p.markerPrefix(), p.Timeout)
		return scriptExitCode
	case ws.Signaled():
		code = 128 + int(ws.Signal())
	default:
		fmt.Fprintf(out, "%sscript ended in state %v\n", p.markerPrefix(), cmd.ProcessState)
		return scriptExitCode
	}
	fmt.Fprintf(out, "%sscript exit %d in %.1fs\n", p.markerPrefix(), code, elapsed)
	return code
}

func (tb testBinary) run(ctx context.Context, env []string, out io.Writer) int {
	cmd := exec.CommandContext(ctx, tb.Binary, tb.Args...)
	cmd.Dir = tb.Dir
	cmd.Env = append(os.Environ(), env...)
	cmd.Stdout, cmd.Stderr = out, out
	// A daemon a test leaves behind must not keep the output pipe, and so the run, open.
	cmd.WaitDelay = 10 * time.Second
	err := cmd.Run()
	var exit *exec.ExitError
	switch {
	case err == nil:
		return 0
	case errors.As(err, &exit) && exit.ExitCode() > 0:
		return exit.ExitCode()
	default: // killed by the timeout, or never started
		fmt.Fprintf(out, "vmtest: %s: %v\n", tb.Package, err)
		return 1
	}
}

// tally reads the test output and the runner's markers line by line and
// counts top-level test results the way `go test -v` prints them.
type tally struct {
	marker                  string
	passed, failed, skipped int
	failedInBinary          int  // --- FAIL lines since the last exit marker
	done                    bool // the final marker was seen
	result                  int  // its value
	partial                 []byte
}

var exitMarker = regexp.MustCompile(`^(\S+) exit (-?\d+) in `)

func newTally(marker string) *tally { return &tally{marker: marker, result: -1} }

// Write lets the tally sit behind an io.MultiWriter.
func (t *tally) Write(b []byte) (int, error) {
	t.partial = append(t.partial, b...)
	for {
		i := strings.IndexByte(string(t.partial), '\n')
		if i < 0 {
			return len(b), nil
		}
		t.line(strings.TrimRight(string(t.partial[:i]), "\r"))
		t.partial = t.partial[i+1:]
	}
}

func (t *tally) line(l string) {
	switch {
	case strings.HasPrefix(l, "--- PASS: "):
		t.passed++
	case strings.HasPrefix(l, "--- FAIL: "):
		t.failed++
		t.failedInBinary++
	case strings.HasPrefix(l, "--- SKIP: "):
		t.skipped++
	case strings.HasPrefix(l, t.marker):
		rest := l[len(t.marker):]
		if m := exitMarker.FindStringSubmatch(rest); m != nil {
			// A binary that failed without a failing test (a panic, a timeout,
			// a crash in TestMain) still counts as one failure.
			if code, _ := strconv.Atoi(m[2]); code != 0 && t.failedInBinary == 0 {
				t.failed++
			}
			t.failedInBinary = 0
		} else if v, ok := strings.CutPrefix(rest, "done "); ok {
			t.done = true
			t.result, _ = strconv.Atoi(v)
		}
	}
}

func (t *tally) summary() string {
	return fmt.Sprintf("%d passed, %d failed, %d skipped", t.passed, t.failed, t.skipped)
}

// ok tells whether the run reported its end and everything passed.
func (t *tally) ok() bool { return t.done && t.result == 0 && t.failed == 0 }
