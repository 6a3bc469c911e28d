package resume_test

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/latency"
	"github.com/lvwatch/lvwatch/internal/qmp"
	"github.com/lvwatch/lvwatch/internal/resume"
	"github.com/lvwatch/lvwatch/internal/testutil"
	"github.com/lvwatch/lvwatch/internal/testvm"
	"github.com/lvwatch/lvwatch/internal/watch"
)

func devno(t testing.TB, d *testvm.QCOW2Disk) watch.Dev {
	t.Helper()
	dev, err := watch.DevOf(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	return dev
}

// newDisk is a qcow2 image of 1 GiB on a loop device of sizeMiB.
func newDisk(t testing.TB, sizeMiB int64) *testvm.QCOW2Disk {
	testutil.RequireRoot(t)
	return testvm.NewQCOW2Disk(t, sizeMiB<<20, 1<<30)
}

// ask connects to the VM's monitor for one question, and lets go of it.
func ask[T any](t testing.TB, vm *testvm.VM, question func(*qmp.Conn, context.Context) (T, error)) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := qmp.Dial(ctx, vm.QMP(0))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	answer, err := question(c, ctx)
	if err != nil {
		t.Fatal(err)
	}
	return answer
}

// status asks the VM's run state.
func status(t testing.TB, vm *testvm.VM) string {
	t.Helper()
	return ask(t, vm, (*qmp.Conn).QueryStatus).Status
}

func waitStatus(t testing.TB, vm *testvm.VM, want string) {
	t.Helper()
	testutil.WaitFor(t, 2*time.Minute, "the VM "+want+"\n"+vm.Console(), func() bool { return status(t, vm) == want })
}

// resumeOn runs the one-shot logic for the devices grown, as `lvwatch resume` does.
func resumeOn(t testing.TB, vm *testvm.VM, devs ...watch.Dev) resume.Outcome {
	t.Helper()
	src := resume.QMP{Patterns: []string{vm.QMP(0)}}
	grown := func(d resume.Drive) bool { return slices.Contains(devs, d.Dev) }
	out := resume.Run(context.Background(), []resume.Source{src}, devs, grown, zerolog.Nop())
	if len(out) != 1 {
		t.Fatalf("outcomes: %+v", out)
	}
	return out[0]
}

func finish(t testing.TB, vm *testvm.VM) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := vm.Wait(ctx); err != nil { // every drive's data read back intact, or an error
		t.Fatalf("the VM did not finish: %v\n%s", err, vm.Console())
	}
}

// A VM paused on ENOSPC is resumed once its device grows, and only then; its
// data reads back intact. The variants are QEMU's ways of getting there.
func TestResumeAfterGrowth(t *testing.T) {
	kit := testvm.NewKit(t)
	for _, tc := range []struct{ name, werror, aio string }{
		{"stop-native", "stop", "native"},
		{"enospc-threads", "enospc", "threads"},
		{"stop-io_uring", "stop", "io_uring"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := newDisk(t, 16)
			vm := testvm.Start(t, kit, testvm.Options{DataMiB: 32,
				Drives: []testvm.Drive{{Path: d.Path, Format: "qcow2", Werror: tc.werror, AIO: tc.aio}}})
			waitStatus(t, vm, "io-error")
			if o := resumeOn(t, vm, devno(t, d)); o.Action != resume.Left || !strings.Contains(o.Why, "still out of space") {
				t.Fatalf("before the growth: %+v", o)
			}
			d.Grow(t, 64<<20)
			if o := resumeOn(t, vm, devno(t, d)); o.Action != resume.Resumed {
				t.Fatalf("after the growth: %+v", o)
			}
			finish(t, vm)
		})
	}
}

// Several pauses in one run: each growth gives a little, each pause is resumed.
func TestResumeSeveralPauses(t *testing.T) {
	kit := testvm.NewKit(t)
	d := newDisk(t, 8)
	vm := testvm.Start(t, kit, testvm.Options{DataMiB: 32, Drives: []testvm.Drive{{Path: d.Path, Format: "qcow2", Werror: "stop", AIO: "native"}}})
	pauses := 0
	for sz := int64(16); ; sz += 8 {
		if !pausedOrDone(t, vm) {
			break
		}
		pauses++
		d.Grow(t, sz<<20)
		if o := resumeOn(t, vm, devno(t, d)); o.Action != resume.Resumed {
			t.Fatalf("pause %d: %+v", pauses, o)
		}
	}
	finish(t, vm)
	if pauses < 2 {
		t.Fatalf("%d pauses, want several", pauses)
	}
}

// pausedOrDone waits for the VM to pause on an I/O error (true) or power off (false).
func pausedOrDone(t testing.TB, vm *testvm.VM) bool {
	t.Helper()
	paused := false
	testutil.WaitFor(t, 2*time.Minute, "the VM to pause or finish\n"+vm.Console(), func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		c, err := qmp.Dial(ctx, vm.QMP(0))
		if err != nil {
			return vm.Exited() // the monitor goes with the VM
		}
		defer c.Close()
		st, err := c.QueryStatus(ctx)
		paused = err == nil && st.Status == "io-error"
		return paused
	})
	return paused
}

// Two VMs paused on one device are both resumed by one look once it grows.
func TestResumeTwoVMsOnOneDevice(t *testing.T) {
	kit := testvm.NewKit(t)
	testutil.RequireRoot(t)
	disk := testvm.NewSharedQCOW2Disk(t, 16<<20, 128<<20)
	var vms []*testvm.VM
	var sockets []string
	for _, offset := range []int64{0, 64 << 20} {
		vm := testvm.Start(t, kit, testvm.Options{DataMiB: 16,
			Drives: []testvm.Drive{{Path: disk.Path, Werror: "stop", Shared: true, Offset: offset}}})
		vms, sockets = append(vms, vm), append(sockets, vm.QMP(0))
	}
	for _, vm := range vms {
		waitStatus(t, vm, "io-error")
	}
	disk.Grow(t, 160<<20) // the image's metadata and all its clusters
	dev := devno(t, disk)
	out := resume.Run(t.Context(), []resume.Source{resume.QMP{Patterns: sockets}}, []watch.Dev{dev},
		func(d resume.Drive) bool { return d.Dev == dev }, zerolog.Nop())
	if len(out) != 2 || out[0].Action != resume.Resumed || out[1].Action != resume.Resumed {
		t.Fatalf("outcomes: %+v", out)
	}
	for _, vm := range vms {
		finish(t, vm)
	}
}

// VMs that are not lvwatch's to resume stay paused: one an operator paused, and
// one whose second drive is still full.
func TestResumeLeavesOthers(t *testing.T) {
	kit := testvm.NewKit(t)
	t.Run("paused by someone", func(t *testing.T) {
		d := newDisk(t, 64)
		vm := testvm.Start(t, kit, testvm.Options{DataMiB: 32, Drives: []testvm.Drive{{Path: d.Path, Format: "qcow2", Werror: "stop", AIO: "native"}}})
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		c, err := qmp.Dial(ctx, vm.QMP(0))
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Execute(ctx, "stop", nil, nil); err != nil {
			t.Fatal(err)
		}
		c.Close()
		if o := resumeOn(t, vm, devno(t, d)); o.Action != resume.Left || !strings.Contains(o.Why, "not paused on an I/O error") {
			t.Fatalf("%+v", o)
		}
		if st := status(t, vm); st != "paused" {
			t.Fatalf("status %s, want paused", st)
		}
	})
	t.Run("a second drive still full", func(t *testing.T) {
		disks := []*testvm.QCOW2Disk{newDisk(t, 16), newDisk(t, 16)}
		vm := testvm.Start(t, kit, testvm.Options{DataMiB: 32, Drives: []testvm.Drive{
			{Path: disks[0].Path, Format: "qcow2", Werror: "stop", AIO: "native"},
			{Path: disks[1].Path, Format: "qcow2", Werror: "stop", AIO: "native"},
		}})
		// The drives run out together, or one at a time (the VM stops at the
		// first): grow one, and resume if it was alone; when the other is out of
		// space too, the first having room is not enough.
		waitStatus(t, vm, "io-error")
		full := noSpaceDrives(t, vm)
		grown, other := disks[full[0]], disks[1-full[0]]
		grown.Grow(t, 64<<20)
		if len(full) == 1 {
			if o := resumeOn(t, vm, devno(t, grown)); o.Action != resume.Resumed {
				t.Fatalf("the first drive grown: %+v", o)
			}
			waitStatus(t, vm, "io-error")
		}
		if o := resumeOn(t, vm, devno(t, grown)); o.Action != resume.Left || !strings.Contains(o.Why, other.Path+" (not grown)") {
			t.Fatalf("with its second drive full: %+v", o)
		}
		if st := status(t, vm); st != "io-error" {
			t.Fatalf("status %s, want io-error", st)
		}
		other.Grow(t, 64<<20)
		if o := resumeOn(t, vm, devno(t, grown), devno(t, other)); o.Action != resume.Resumed {
			t.Fatalf("with both grown: %+v", o)
		}
		finish(t, vm)
	})
}

// noSpaceDrives are the indexes of the VM's drives whose io-status is nospace.
func noSpaceDrives(t testing.TB, vm *testvm.VM) []int {
	t.Helper()
	var full []int
	for i, b := range ask(t, vm, (*qmp.Conn).QueryBlock) {
		if b.IOStatus == qmp.IOStatusNoSpace {
			full = append(full, i)
		}
	}
	return full
}

// The time from a device's growth to its VM running again, as `lvwatch resume`
// (and the agent, after its refresh) does it: connect, ask, cont, disconnect.
func BenchmarkResume(b *testing.B) {
	kit := testvm.NewKit(b)
	const step = 4
	d := newDisk(b, 8)
	vm := testvm.Start(b, kit, testvm.Options{DataMiB: 8 + step*b.N, Drives: []testvm.Drive{{Path: d.Path, Format: "qcow2", Werror: "stop", AIO: "native"}}})
	var took []time.Duration
	sz := int64(8)
	for pausedOrDone(b, vm) {
		sz += step
		d.Grow(b, sz<<20)
		t0 := time.Now()
		o := resumeOn(b, vm, devno(b, d))
		if o.Action != resume.Resumed {
			b.Fatalf("%+v", o)
		}
		took = append(took, o.At.Sub(t0))
	}
	finish(b, vm)
	latency.Report(b, "resume", took, time.Millisecond)
}
