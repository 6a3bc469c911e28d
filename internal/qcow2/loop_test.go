package qcow2

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/lvwatch/lvwatch/internal/loopdev"
	"github.com/lvwatch/lvwatch/internal/testutil"
)

// On a block device, ProbePath reads past the page cache: the header is written under
// the device (into the loop device's backing file, as another host writes a shared LV)
// after this host cached the device's first block as zeros.
func TestProbePathLoopDevice(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireFile(t, "/dev/loop-control", "loop devices")
	backing := filepath.Join(t.TempDir(), "lv")
	if err := os.WriteFile(backing, make([]byte, 1<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	dev, err := loopdev.Attach(backing)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()

	if _, err := ProbePath(dev.Path); !errors.Is(err, ErrNotQcow2) {
		t.Fatalf("zeroed device: %v; want ErrNotQcow2", err)
	}
	// A buffered read caches the device's first block, zeros.
	cached := readBuffered(t, dev.Path)

	f, err := os.OpenFile(backing, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	hdr := readHeader(t, "v3-backing")
	if _, err := f.WriteAt(hdr, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}

	// Through the cache the device still looks raw (when the kernel kept the block):
	// what a read without O_DIRECT would have seen.
	if again := readBuffered(t, dev.Path); !bytes.Equal(again, cached) {
		t.Log("the page cache dropped the stale block: this run does not show that O_DIRECT is used")
	}
	h, err := ProbePath(dev.Path)
	if err != nil {
		t.Fatal(err)
	}
	if want := testdataHeaders["v3-backing"]; h != want {
		t.Errorf("%s: %+v, want %+v", dev.Path, h, want)
	}
}

func readBuffered(t *testing.T, path string) []byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 4096)
	if _, err := f.ReadAt(b, 0); err != nil {
		t.Fatal(err)
	}
	return b
}
