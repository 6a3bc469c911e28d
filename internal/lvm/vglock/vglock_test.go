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

// TestKeepsLVMOut: while the shared lock is held, a real lvextend on the VG
// cannot take its own (told not to wait, it fails at once); while the
// exclusive one is, neither can a reader (lvs), which takes lvm's lock shared
// as lvchange --refresh does. Once released, they go through.
func TestKeepsLVMOut(t *testing.T) {
	env := lvmtest.New(t, 1, 64<<20)
	vg := fmt.Sprintf("lvwatch_vglock_%d", os.Getpid())
	env.CreateVG(vg, env.Paths(), nil, []string{"-s", "1m"})
	env.MustRun("lvcreate", "-q", "-n", "lv", "-l", "1", "-Zn", "-Wn", vg)

	noWait := []string{"--config", "global/wait_for_locks=0"}
	for _, tc := range []struct {
		name string
		take func(context.Context, string, string) (*vglock.Lock, error)
		cmd  []string
	}{
		{"shared", vglock.Shared, append([]string{"lvextend", "-q", "-l", "+1"}, append(noWait, vg+"/lv")...)},
		{"exclusive", vglock.Exclusive, append([]string{"lvs"}, append(noWait, vg)...)},
	} {
		l, err := tc.take(t.Context(), filepath.Join(env.Dir, "lock"), vg)
		if err != nil {
			t.Fatal(err)
		}
		_, err = env.Run(tc.cmd...)
		if err == nil || !strings.Contains(err.Error(), "lock") {
			t.Errorf("%s while the %s lock is held: %v, want a lock failure", tc.cmd[0], tc.name, err)
		}
		if err := l.Unlock(); err != nil {
			t.Fatal(err)
		}
		env.MustRun(tc.cmd...)
	}
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
