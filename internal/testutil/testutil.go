// Package testutil holds helpers shared by tests that need real kernel features.
package testutil

import (
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// RequirePrivilegedEnv is the variable that turns a privilege skip into a failure.
// CI sets it so that a test that cannot run there is noticed instead of skipped.
const RequirePrivilegedEnv = "LVWATCH_REQUIRE_PRIVILEGED"

// Privileged reports whether privileged tests must run rather than skip.
func Privileged() bool { return os.Getenv(RequirePrivilegedEnv) == "1" }

// SkipOrFail skips the test with reason, or fails it when LVWATCH_REQUIRE_PRIVILEGED=1.
func SkipOrFail(t testing.TB, reason string) {
	t.Helper()
	if Privileged() {
		t.Fatalf("%s (and %s=1 forbids skipping)", reason, RequirePrivilegedEnv)
	}
	t.Skip(reason)
}

// RequireRoot skips (or fails, see SkipOrFail) unless the test runs as root.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		SkipOrFail(t, "needs root")
	}
}

// RequireFile skips (or fails) unless path exists, naming the kernel feature it stands for.
func RequireFile(t testing.TB, path, feature string) {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		SkipOrFail(t, feature+" unavailable: "+err.Error())
	}
}

// LogBuffer collects a logger's lines for a test to read; safe for concurrent writers.
type LogBuffer struct {
	mu  sync.Mutex
	buf strings.Builder
}

func (l *LogBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

// String returns everything written.
func (l *LogBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// Lines returns the lines that contain substr.
func (l *LogBuffer) Lines(substr string) []string {
	var out []string
	for _, line := range strings.Split(l.String(), "\n") {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return out
}

// WaitFor polls cond until it holds. The timeout only turns a hang into a failure
// (what says what did not come): it is no assertion on speed. The poll backs off
// from 1 ms to 20 ms: on the guest's two emulated CPUs a 1 ms poll took CPU from
// the code under test and slowed what a benchmark measured.
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for pause := time.Millisecond; !cond(); pause = min(2*pause, 20*time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", timeout, what)
		}
		time.Sleep(pause)
	}
}

// WriteDirect writes 4 KiB of zeros at offset of the block device at path with
// O_DIRECT, as a VM's disk writes go, past the page cache.
func WriteDirect(t testing.TB, path string, offset int64) {
	t.Helper()
	fd, err := unix.Open(path, unix.O_WRONLY|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE) // page-aligned
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(buf)
	if _, err := unix.Pwrite(fd, buf, offset); err != nil {
		t.Fatalf("write %s at %d: %v", path, offset, err)
	}
}
