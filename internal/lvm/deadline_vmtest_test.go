//go:build vmtest

package lvm_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lvwatch/lvwatch/internal/dm"
	"github.com/lvwatch/lvwatch/internal/dm/dmtest"
	"github.com/lvwatch/lvwatch/internal/lvm"
	"github.com/lvwatch/lvwatch/internal/lvm/lvmtest"
)

// TestReadVGDeadline: a device whose reads hang (a suspended dm device
// queues them until its resume, as a multipath map with no path left does)
// costs a read of the VG its deadline, once: the next read does not wait
// for it again while the first is still pending, and once the device
// answers it is read again.
func TestReadVGDeadline(t *testing.T) {
	ctl := dmtest.Control(t)
	env := lvmtest.New(t, 2, 64<<20)
	vg := fmt.Sprintf("lvwatch-t-deadline-%d", os.Getpid())
	env.CreateVG(vg, env.Paths()[:1], nil, []string{"-s", "1m"})

	name := fmt.Sprintf("lvwatch-dead-path-%d", os.Getpid())
	info, err := ctl.Create(name, "")
	if err != nil {
		t.Fatal(err)
	}
	id := dm.ByName(name)
	t.Cleanup(func() { ctl.Remove(id) })
	below := env.Devices[1]
	if _, err := ctl.Load(id, []dm.Target{{Length: 64 << 11, Type: "linear", Params: fmt.Sprintf("%d:%d 0", below.Major, below.Minor)}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Resume(id); err != nil {
		t.Fatal(err)
	}
	if _, err := ctl.Suspend(t.Context(), id, dm.NoFlush); err != nil {
		t.Fatal(err)
	}
	resume := func() {
		if _, err := ctl.Resume(id); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(resume)
	devices := []string{env.Paths()[0], info.BlockDevice()}

	warned := func(got *lvm.VG, what string) bool {
		return strings.Contains(strings.Join(got.Warnings, "\n"), what)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 500*time.Millisecond)
	defer cancel()
	got, err := lvm.ReadVG(ctx, vg, devices)
	if err != nil || !warned(got, "did not answer in time") {
		t.Fatalf("read with a device that hangs: %v; want the VG, and a warning about the device", err)
	}
	t.Log(strings.Join(got.Warnings, "\n"))
	// No deadline this time: it must not wait for the device again.
	if got, err = lvm.ReadVG(t.Context(), vg, devices); err != nil || !warned(got, "has not returned") {
		t.Fatalf("second read: %v; want the VG and the device skipped", err)
	}
	resume()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if got, err = lvm.ReadVG(t.Context(), vg, devices); err == nil && !warned(got, "answer") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the resume: %v %q; want the device read again", err, got.Warnings)
		}
	}
}
