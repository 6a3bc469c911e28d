package loopdev

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/lvwatch/lvwatch/internal/blockdev"
	"github.com/lvwatch/lvwatch/internal/testutil"
	"golang.org/x/sys/unix"
)

func TestNewSparse(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireFile(t, "/dev/loop-control", "loop devices")
	dev, err := NewSparse(t.TempDir(), 8<<20)
	if err != nil {
		t.Fatal(err)
	}
	size, err := blockdev.Size(dev.Path)
	if err != nil || size != 8<<20 {
		t.Errorf("%s size = %d, %v; want %d", dev.Path, size, err, 8<<20)
	}
	if dev.Major != 7 {
		t.Errorf("%s major = %d, want 7", dev.Path, dev.Major)
	}
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
}

// The read-only policy set with BLKROSET outlives a detach; attaching clears it.
func TestAttachClearsReadOnly(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireFile(t, "/dev/loop-control", "loop devices")
	backing := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(backing, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	dev, err := Attach(backing)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.IoctlSetPointerInt(int(dev.f.Fd()), unix.BLKROSET, 1); err != nil {
		t.Fatal(err)
	}
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	bf, err := os.OpenFile(backing, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer bf.Close()
	again, err := configure(dev.Path, bf) // the same device number
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if ro, err := unix.IoctlGetInt(int(again.f.Fd()), unix.BLKROGET); err != nil || ro != 0 {
		t.Errorf("%s reattached read-only (%d, %v)", dev.Path, ro, err)
	}
}
