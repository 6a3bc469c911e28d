package loopdev

import (
	"testing"

	"github.com/lvwatch/lvwatch/internal/blockdev"
	"github.com/lvwatch/lvwatch/internal/testutil"
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
