package main

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lvwatch/lvwatch/internal/qmp"
	"github.com/lvwatch/lvwatch/internal/testutil"
	"github.com/lvwatch/lvwatch/internal/testvm"
)

func TestResumeUsage(t *testing.T) {
	if _, stderr, code := lvwatch(t, "resume"); code != 2 || !strings.Contains(stderr, "name at least one DEVICE") {
		t.Fatalf("no device: exit %d, %q", code, stderr)
	}
	if _, stderr, code := lvwatch(t, "resume", "--qmp", "/nonexistent.sock", "--libvirt", "none", "/dev/null"); code != 1 || !strings.Contains(stderr, "not a block device") {
		t.Fatalf("not a block device: exit %d, %q", code, stderr)
	}
}

// `lvwatch resume` as an operator runs it after growing an LV by hand: a VM
// paused for want of space on the device is resumed, one line says so, and a
// monitor named that nobody answers on makes the exit 1.
func TestResumeCommand(t *testing.T) {
	testutil.RequireRoot(t)
	kit := testvm.NewKit(t)
	disk := testvm.NewQCOW2Disk(t, 16<<20, 1<<30)
	vm := testvm.Start(t, kit, testvm.Options{DataMiB: 32, Drives: []testvm.Drive{{Path: disk.Path, Werror: "stop"}}})
	testutil.WaitFor(t, 2*time.Minute, "the VM paused on ENOSPC\n"+vm.Console(), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := qmp.Dial(ctx, vm.QMP(0))
		if err != nil {
			return false
		}
		defer c.Close()
		st, err := c.QueryStatus(ctx)
		return err == nil && st.Status == qmp.StatusIOError
	})

	args := []string{"resume", "--qmp", vm.QMP(0), "--libvirt", "none", disk.Path}
	stdout, stderr, code := lvwatch(t, args...)
	if code != 0 || !strings.HasPrefix(stdout, "left ") || !strings.Contains(stdout, "still out of space") {
		t.Fatalf("before the growth: exit %d\n%s%s", code, stdout, stderr)
	}
	disk.Grow(t, 64<<20)
	missing := filepath.Join(t.TempDir(), "gone.qmp")
	stdout, stderr, code = lvwatch(t, append(args[:len(args)-1], "--qmp", missing, disk.Path)...)
	if code != 1 || !strings.Contains(stdout, "resumed    "+vm.QMP(0)+": room again on d0") || !strings.Contains(stdout, "failed     "+missing) {
		t.Fatalf("after the growth, with a monitor that is not there: exit %d\n%s%s", code, stdout, stderr)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := vm.Wait(ctx); err != nil {
		t.Fatal(err)
	}
}
