// Package dmtest gives tests a device-mapper control handle, skipping them (or
// failing them under LVWATCH_REQUIRE_PRIVILEGED=1) where there is no device-mapper.
package dmtest

import (
	"errors"
	"testing"

	"github.com/lvwatch/lvwatch/internal/blockdev"
	"github.com/lvwatch/lvwatch/internal/dm"
	"github.com/lvwatch/lvwatch/internal/testutil"
	"golang.org/x/sys/unix"
)

// Control opens device-mapper's control node for the test and closes it at cleanup.
func Control(t testing.TB) *dm.Control {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireFile(t, dm.ControlPath, "device-mapper")
	c, err := dm.Open()
	// A kernel without device-mapper may still have the node: opening it says ENODEV.
	if errors.Is(err, unix.ENODEV) {
		testutil.SkipOrFail(t, "device-mapper unavailable: "+err.Error())
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// BlockSize returns the kernel's size of the block device at path, failing the test on error.
func BlockSize(t testing.TB, path string) uint64 {
	t.Helper()
	n, err := blockdev.Size(path)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
