package signature

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/lvwatch/lvwatch/internal/lvm/lvmtest"
	"github.com/lvwatch/lvwatch/internal/testutil"
)

// The first bytes of mailbox volumes in use carry no signature, whatever the hosts
// wrote: zeros, the events block, requests and CLEAN messages in the mailboxes.
func TestProbeMailboxVolumes(t *testing.T) {
	b := make([]byte, ProbeSize)
	if found := Probe(b); found != nil {
		t.Errorf("zeros: %v", found)
	}
	copy(b, "\x00evt\x8e\x5a\x1f\x77\x29\x0b\x4c\x1e\x93\xd2\x11\x0f\x7e\xa5\x43\x60")
	request := "1xtnd\xe1\x5f\xfe\x65\x54\x8a\x18\xb3\xe0\x4a\x54\xe5\x5e\xc8\xdb\x8a" + strings.Repeat("\x5a", 16) + "0000000000001400" + strings.Repeat("0", 11)
	for off := 4096; off+64 <= len(b); off += 64 {
		if off%4096 == 4032 {
			continue // slot 63: owner mark and checksum
		}
		if off%128 == 0 {
			copy(b[off:], request)
		} else {
			copy(b[off:], strings.Repeat("\x01", 64))
		}
	}
	if found := Probe(b); found != nil {
		t.Errorf("mailbox volume in use: %v", found)
	}
}

func TestProbeKnown(t *testing.T) {
	for _, tc := range []struct {
		name  string
		off   int
		magic string
	}{
		{"LVM2 physical volume", 512, "LABELONE\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x20\x00\x00\x00LVM2 001"},
		{"LVM2 physical volume", 1536, "LABELONE\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x20\x00\x00\x00LVM2 001"},
		{"GPT partition table", 512, "EFI PART"},
		{"DOS partition table or boot sector", 510, "\x55\xaa"},
		{"LUKS encrypted volume", 0, "LUKS\xba\xbe\x00\x02"},
		{"XFS file system", 0, "XFSB"},
		{"ext2/3/4 file system", 1080, "\x53\xef"},
		{"Linux swap", 4086, "SWAPSPACE2"},
		{"Linux swap", 4086, "SWAP-SPACE"},
		{"qcow2 image", 0, "QFI\xfb\x00\x00\x00\x03"},
		{"Linux md RAID member", 4096, "\xfc\x4e\x2b\xa9"},
		{"Linux md RAID member", 0, "\xfc\x4e\x2b\xa9"},
		{"btrfs file system", 65600, "_BHRfS_M"},
	} {
		b := make([]byte, ProbeSize)
		copy(b[tc.off:], tc.magic)
		if found := Probe(b); !slices.Equal(found, []string{tc.name}) {
			t.Errorf("%q at %d: found %v, want %s", tc.magic, tc.off, found, tc.name)
		}
	}
	// A label without its type is not LVM2's; a short buffer checks what it holds.
	b := make([]byte, ProbeSize)
	copy(b[512:], "LABELONE")
	if found := Probe(b); found != nil {
		t.Errorf("LABELONE alone: %v", found)
	}
	if found := Probe([]byte("XFSB")); !slices.Equal(found, []string{"XFS file system"}) {
		t.Errorf("4 bytes of XFS: %v", found)
	}
}

// probeFile returns what Probe finds in the first ProbeSize bytes of path.
func probeFile(t *testing.T, path string) []string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, ProbeSize)
	n, err := f.ReadAt(b, 0)
	if n < len(b) && n < 4096 {
		t.Fatalf("read %s: %d bytes, %v", path, n, err)
	}
	return Probe(b[:n])
}

// The real tools' output is recognised: mkfs.ext4, mkswap and qemu-img on files,
// pvcreate on a loop device.
func TestProbeRealFormats(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		want string
		cmd  []string
	}{
		{"ext2/3/4 file system", []string{"mkfs.ext4", "-q", "-F", "FILE", "8M"}},
		{"Linux swap", []string{"mkswap", "FILE", "8192"}},
		{"qcow2 image", []string{"qemu-img", "create", "-q", "-f", "qcow2", "FILE", "8M"}},
	} {
		if _, err := exec.LookPath(tc.cmd[0]); err != nil {
			testutil.SkipOrFail(t, tc.cmd[0]+" not installed (tools/deps.sh installs it)")
		}
		file := filepath.Join(dir, tc.cmd[0])
		if err := os.WriteFile(file, make([]byte, 8<<20), 0o600); err != nil {
			t.Fatal(err)
		}
		args := slices.Clone(tc.cmd[1:])
		args[slices.Index(args, "FILE")] = file
		if out, err := exec.Command(tc.cmd[0], args...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", tc.cmd[0], err, out)
		}
		if found := probeFile(t, file); !slices.Contains(found, tc.want) {
			t.Errorf("%s: found %v, want %s", tc.cmd[0], found, tc.want)
		}
	}

	env := lvmtest.New(t, 1, 16<<20)
	pv := env.Paths()[0]
	env.MustRun("pvcreate", "-q", pv)
	if found := probeFile(t, pv); !slices.Equal(found, []string{"LVM2 physical volume"}) {
		t.Errorf("pvcreate: found %v", found)
	}
}

// Any bytes: Probe never panics, and names only known signatures, each once.
func FuzzProbe(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, 4096))
	f.Add([]byte("\x00evt0123456789abcdef"))
	pv := make([]byte, 1024)
	copy(pv[512:], "LABELONE\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x20\x00\x00\x00LVM2 001")
	f.Add(pv)
	f.Fuzz(func(t *testing.T, b []byte) {
		found := Probe(b)
		for i, name := range found {
			if !slices.ContainsFunc(signatures, func(k known) bool { return k.name == name }) || slices.Contains(found[:i], name) {
				t.Fatalf("found %v", found)
			}
		}
	})
}
