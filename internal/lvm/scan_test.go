package lvm

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lvwatch/lvwatch/internal/loopdev"
	"github.com/lvwatch/lvwatch/internal/testutil"
)

func TestDevNodePath(t *testing.T) {
	dir := t.TempDir()
	if got := devNodePath(dir, "cciss!c0d0"); got != "/dev/cciss/c0d0" {
		t.Errorf("without uevent: %s", got)
	}
	os.WriteFile(filepath.Join(dir, "uevent"), []byte("MAJOR=253\nMINOR=3\nDEVNAME=dm-3\nDEVTYPE=disk\n"), 0o600)
	if got := devNodePath(dir, "dm-3"); got != "/dev/dm-3" {
		t.Errorf("with uevent: %s", got)
	}
	os.WriteFile(filepath.Join(dir, "uevent"), []byte("DEVNAME=../etc/passwd\n"), 0o600)
	if got := devNodePath(dir, "sdx"); got != "/dev/sdx" {
		t.Errorf("with a hostile uevent: %s", got)
	}
}

// TestScanAndOpen: the scan lists a loop device under its /dev name and
// number; a device whose /dev node is missing (no udev) is still read,
// through a temporary node; direct reads return what the device holds.
func TestScanAndOpen(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireFile(t, "/dev/loop-control", "loop devices")
	dev, err := loopdev.NewSparse(t.TempDir(), 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	img := buildImage(imageSpec{pvid: "DnpfqCA2rE6bj3y69GLrGE5kUcrCclOy", mdaSize: 64 << 10, text: []byte(sampleMetadata), textOff: 63 << 10})
	w, err := os.OpenFile(dev.Path, os.O_WRONLY|os.O_SYNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.WriteAt(img, 0); err != nil {
		t.Fatal(err)
	}
	w.Close()

	cands, _, err := scanBlockDevices(&HostConfig{})
	if err != nil {
		t.Fatal(err)
	}
	var found *candidate
	for i := range cands {
		if cands[i].major == dev.Major && cands[i].minor == dev.Minor {
			found = &cands[i]
		}
	}
	if found == nil || found.path != dev.Path {
		t.Fatalf("scan did not list %s (%d:%d): %+v", dev.Path, dev.Major, dev.Minor, found)
	}

	for _, c := range []candidate{*found, {path: "/dev/lvwatch-no-such-node", major: dev.Major, minor: dev.Minor, scanned: true}} {
		r := readCandidate(c, "my-vg")
		if r.err != nil {
			t.Fatalf("%s: %v", c.path, r.err)
		}
		if r.tmpNode != (c.path != dev.Path) || !r.info.Direct || !r.info.IsBlock || r.info.Major != dev.Major || r.info.Minor != dev.Minor {
			t.Errorf("%s: %+v tmpNode %v", c.path, r.info, r.tmpNode)
		}
		if len(r.info.Areas) != 1 || r.info.Areas[0].text == nil || !r.info.Areas[0].Text.Wrapped() {
			t.Fatalf("%s: %d areas, first %+v", c.path, len(r.info.Areas), r.info.Areas[0].Text)
		}
		vg, err := assemble("my-vg", []*devResult{r}, false)
		if err != nil {
			t.Fatal(err)
		}
		if vg.PVs[0].Major != dev.Major || vg.PVs[0].Minor != dev.Minor || vg.PVs[0].Device != c.path {
			t.Errorf("%s: PV %+v", c.path, vg.PVs[0])
		}
	}
	if entries, _ := filepath.Glob(filepath.Join(os.TempDir(), "lvwatch-dev-*")); len(entries) > 0 {
		t.Errorf("temporary nodes left behind: %v", entries)
	}
}

// TestDirectReadSeesOtherWriter: metadata rewritten under this host's page
// cache (here: written to the loop device's backing file, as another host
// writes to shared storage) is what ReadVG sees, not the cached copy.
func TestDirectReadSeesOtherWriter(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireFile(t, "/dev/loop-control", "loop devices")
	const pvid = "DnpfqCA2rE6bj3y69GLrGE5kUcrCclOy"
	image := func(seqno int) []byte {
		text := strings.Replace(sampleMetadata, "seqno = 17", fmt.Sprintf("seqno = %d", seqno), 1)
		return buildImage(imageSpec{pvid: pvid, mdaSize: 64 << 10, text: []byte(text), textOff: 512, devSize: 1 << 20})
	}
	backing := filepath.Join(t.TempDir(), "shared.img")
	if err := os.WriteFile(backing, image(1), 0o600); err != nil {
		t.Fatal(err)
	}
	dev, err := loopdev.Attach(backing)
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	// This host reads the device through its page cache...
	cached, err := os.ReadFile(dev.Path)
	if err != nil {
		t.Fatal(err)
	}
	// ...then "another host" commits seqno 2.
	if err := os.WriteFile(backing, image(2), 0o600); err != nil {
		t.Fatal(err)
	}
	again, err := os.ReadFile(dev.Path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("a buffered read sees the old metadata again: %v", string(again[4096:8192]) == string(cached[4096:8192]))
	vg, err := ReadVG(t.Context(), "my-vg", []string{dev.Path})
	if err != nil {
		t.Fatal(err)
	}
	if vg.Seqno != 2 {
		t.Errorf("ReadVG saw seqno %d, the new metadata has 2", vg.Seqno)
	}
}

// DeviceNode names every block device of this machine by the node that holds its number.
func TestDeviceNode(t *testing.T) {
	entries, err := os.ReadDir("/sys/dev/block")
	if err != nil || len(entries) == 0 {
		t.Skipf("no block devices in sysfs: %v", err)
	}
	for _, e := range entries {
		var major, minor uint32
		if _, err := fmt.Sscanf(e.Name(), "%d:%d", &major, &minor); err != nil {
			t.Fatalf("%s: %v", e.Name(), err)
		}
		node, err := DeviceNode(major, minor)
		if err != nil {
			t.Fatal(err)
		}
		var st unix.Stat_t
		if err := unix.Stat(node, &st); err != nil {
			t.Errorf("%s: %v", e.Name(), err)
		} else if unix.Major(st.Rdev) != major || unix.Minor(st.Rdev) != minor {
			t.Errorf("%s: %s is %d:%d", e.Name(), node, unix.Major(st.Rdev), unix.Minor(st.Rdev))
		}
	}
	if _, err := DeviceNode(4095, 1048575); err == nil {
		t.Error("a device number with no device: no error")
	}
}
