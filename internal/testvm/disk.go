package testvm

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lvwatch/lvwatch/internal/blockdev"
	"github.com/lvwatch/lvwatch/internal/loopdev"
	"github.com/lvwatch/lvwatch/internal/testutil"
)

// QCOW2Disk is a qcow2 image on a loop device over a sparse file: a block
// device that runs out of space as a thin LV does, and grows as one. The
// device is detached at the end of the test, after the VMs started later.
type QCOW2Disk struct {
	Path    string // the loop device, for Drive.Path
	backing string
}

// NewQCOW2Disk makes a loop device of deviceSize bytes with a qcow2 image of
// virtualSize bytes on it, created there by qemu-img as on an LV.
func NewQCOW2Disk(t testing.TB, deviceSize, virtualSize int64) *QCOW2Disk {
	t.Helper()
	d := newLoopDisk(t, deviceSize)
	qemuImg(t, "create", "-q", "-f", "qcow2", d.Path, strconv.FormatInt(virtualSize, 10))
	return d
}

// NewSharedQCOW2Disk is NewQCOW2Disk for VMs that write the image at once,
// each at its own Drive.Offset with Drive.Shared. Two QEMUs that allocated
// clusters in one image would each take the same free ones; so all the
// image's clusters are allocated when it is made (preallocation=metadata, in
// order: data for offset X lies near X on the device), and a write past the
// device's end still fails with ENOSPC.
func NewSharedQCOW2Disk(t testing.TB, deviceSize, virtualSize int64) *QCOW2Disk {
	t.Helper()
	testutil.RequireRoot(t)
	backing := filepath.Join(t.TempDir(), "disk")
	// Made on the file at its full size, then cut to the device's: qemu-img
	// cannot preallocate past the end of a device.
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "preallocation=metadata", backing, strconv.FormatInt(virtualSize, 10))
	if err := os.Truncate(backing, deviceSize); err != nil {
		t.Fatal(err)
	}
	return attachLoopDisk(t, backing)
}

func newLoopDisk(t testing.TB, size int64) *QCOW2Disk {
	t.Helper()
	testutil.RequireRoot(t)
	backing := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, size); err != nil {
		t.Fatal(err)
	}
	return attachLoopDisk(t, backing)
}

func attachLoopDisk(t testing.TB, backing string) *QCOW2Disk {
	t.Helper()
	testutil.RequireFile(t, "/dev/loop-control", "loop devices")
	dev, err := loopdev.Attach(backing)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := dev.Close(); err != nil {
			t.Error(err)
		}
	})
	return &QCOW2Disk{Path: dev.Path, backing: backing}
}

// Grow makes the device size bytes, as lvextend and a refresh would.
func (d *QCOW2Disk) Grow(t testing.TB, size int64) {
	t.Helper()
	if err := os.Truncate(d.backing, size); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(d.Path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// The loop driver reads its backing file's size again.
	if err := unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_CAPACITY, 0); err != nil {
		t.Fatalf("LOOP_SET_CAPACITY %s: %v", d.Path, err)
	}
	if got, err := blockdev.Size(d.Path); err != nil || got != uint64(size) {
		t.Fatalf("%s is %d bytes after growing to %d: %v", d.Path, got, size, err)
	}
}

func qemuImg(t testing.TB, args ...string) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		testutil.SkipOrFail(t, "qemu-img (tools/deps.sh installs it): "+err.Error())
	}
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
	}
}
