package resume_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/resume"
	"github.com/lvwatch/lvwatch/internal/testvm"
	"github.com/lvwatch/lvwatch/internal/watch"
)

// A monitor of lvwatch's own, held open: QEMU's BLOCK_IO_ERROR names the
// drive's device as the VM pauses, and the VM is asked and resumed through the
// connection held, while its main monitor stays free for its manager.
func TestMonitorsHeld(t *testing.T) {
	kit := testvm.NewKit(t)
	d := newDisk(t, 16)
	vm := testvm.Start(t, kit, testvm.Options{DataMiB: 32, Monitors: 2,
		Drives: []testvm.Drive{{Path: d.Path, Format: "qcow2", Werror: "stop", AIO: "native"}}})
	// By a glob, as an operator configures them, but for the VM's main monitor:
	// the second socket is found.
	mon := resume.NewMonitors([]string{filepath.Join(filepath.Dir(vm.QMP(1)), "*")}, []string{vm.QMP(0)})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	failedOn := make(chan string, 8)
	watching := make(chan error, 1)
	go func() { watching <- mon.WatchPauses(ctx, func(path string) { failedOn <- path }) }()

	select {
	case path := <-failedOn:
		if path != d.Path {
			t.Fatalf("the held monitor names %s, want %s", path, d.Path)
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("no ENOSPC from the held monitor\n%s", vm.Console())
	}
	if st := status(t, vm); st != "io-error" { // through the main monitor, which nothing holds
		t.Fatalf("the VM is %s, want io-error", st)
	}
	dev := devno(t, d)
	grown := func(dr resume.Drive) bool { return dr.Dev == dev }
	if out := resume.Run(ctx, []resume.Source{mon}, []watch.Dev{dev}, grown, zerolog.Nop()); len(out) != 1 || out[0].Action != resume.Left {
		t.Fatalf("before the growth: %+v", out)
	}
	d.Grow(t, 64<<20)
	out := resume.Run(ctx, []resume.Source{mon}, []watch.Dev{dev}, grown, zerolog.Nop())
	if len(out) != 1 || out[0].Action != resume.Resumed || out[0].VM != vm.QMP(1) {
		t.Fatalf("after the growth: %+v", out)
	}
	finish(t, vm)
	cancel()
	if err := <-watching; err != context.Canceled {
		t.Errorf("WatchPauses ended with %v, want its context's end", err)
	}
	// WatchPauses waited for its readers: no event comes after this.
	close(failedOn)
	for path := range failedOn {
		if path != d.Path {
			t.Errorf("a later event named %s", path)
		}
	}
}
