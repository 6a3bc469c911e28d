package vglock_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lvwatch/lvwatch/internal/lvm/lvmtest"
	"github.com/lvwatch/lvwatch/internal/lvm/vglock"
)

// TestSharedKeepsLVMOut: while the lock is held, a real lvextend on the VG
// cannot take its own (told not to wait, it fails at once); once released,
// it goes through.
func TestSharedKeepsLVMOut(t *testing.T) {
	env := lvmtest.New(t, 1, 64<<20)
	vg := fmt.Sprintf("lvwatch_vglock_%d", os.Getpid())
	env.CreateVG(vg, env.Paths(), nil, []string{"-s", "1m"})
	env.MustRun("lvcreate", "-q", "-n", "lv", "-l", "1", "-Zn", "-Wn", vg)

	l, err := vglock.Shared(t.Context(), filepath.Join(env.Dir, "lock"), vg)
	if err != nil {
		t.Fatal(err)
	}
	extend := []string{"lvextend", "-q", "--config", "global/wait_for_locks=0", "-l", "+1", vg + "/lv"}
	_, err = env.Run(extend...)
	if err == nil || !strings.Contains(err.Error(), "lock") {
		t.Errorf("lvextend while the shared lock is held: %v, want a lock failure", err)
	}
	if err := l.Unlock(); err != nil {
		t.Fatal(err)
	}
	env.MustRun(extend...)
}

// TestSharedWaitsForWriter: while lvm holds the VG exclusive (here: the
// same flock lvm takes), Shared waits, and gives up when its context ends.
func TestSharedWaitsForWriter(t *testing.T) {
	dir := t.TempDir()
	f, err := os.OpenFile(filepath.Join(dir, "V_vg0"), os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if l, err := vglock.Shared(ctx, dir, "vg0"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shared under an exclusive lock: %v, %v; want the deadline", l, err)
	}
	unix.Flock(int(f.Fd()), unix.LOCK_UN)
	l, err := vglock.Shared(t.Context(), dir, "vg0")
	if err != nil {
		t.Fatal(err)
	}
	l.Unlock()
	if _, err := vglock.Shared(t.Context(), dir, "../etc"); err == nil {
		t.Error("a VG name with a slash was locked")
	}
}
