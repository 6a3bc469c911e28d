// Package signature recognises what a block device or image already holds from its
// first bytes, as blkid does: a tool about to overwrite a volume asks it first, so
// that a mistyped path does not destroy a physical volume, a file system or a disk.
package signature

import (
	"bytes"
	"encoding/binary"
)

// ProbeSize is how many leading bytes Probe looks at; fewer are fine, the signatures
// beyond them are then not checked.
const ProbeSize = 68 << 10

// A known signature: name, and whether b (the volume's first bytes) carries it.
type known struct {
	name  string
	match func(b []byte) bool
}

// at reports whether b holds magic at off.
func at(b []byte, off int, magic string) bool {
	return len(b) >= off+len(magic) && string(b[off:off+len(magic)]) == magic
}

// le32At reports whether b holds v, little-endian, at off.
func le32At(b []byte, off int, v uint32) bool {
	return len(b) >= off+4 && binary.LittleEndian.Uint32(b[off:]) == v
}

const mdMagic = 0xa92b4efc // Linux md superblock, versions 1.x

var signatures = []known{
	{"LVM2 physical volume", func(b []byte) bool {
		// The label sits in one of the first four 512-byte sectors.
		for s := 0; s < 4; s++ {
			if at(b, s*512, "LABELONE") && at(b, s*512+24, "LVM2 001") {
				return true
			}
		}
		return false
	}},
	{"GPT partition table", func(b []byte) bool { return at(b, 512, "EFI PART") }},
	{"DOS partition table or boot sector", func(b []byte) bool { return at(b, 510, "\x55\xaa") }},
	{"LUKS encrypted volume", func(b []byte) bool { return at(b, 0, "LUKS\xba\xbe") }},
	{"XFS file system", func(b []byte) bool { return at(b, 0, "XFSB") }},
	{"ext2/3/4 file system", func(b []byte) bool { return at(b, 1080, "\x53\xef") }},
	{"Linux swap", func(b []byte) bool { return at(b, 4086, "SWAPSPACE2") || at(b, 4086, "SWAP-SPACE") }},
	{"qcow2 image", func(b []byte) bool { return at(b, 0, "QFI\xfb") }},
	{"Linux md RAID member", func(b []byte) bool { return le32At(b, 0, mdMagic) || le32At(b, 4096, mdMagic) }},
	{"btrfs file system", func(b []byte) bool { return at(b, 65536+64, "_BHRfS_M") }},
}

// Probe returns the names of the known signatures the leading bytes b carry (up to
// ProbeSize of them are looked at), or nil when it recognises none. Only magic numbers
// are checked, at the offsets where their formats put them; no field is parsed.
func Probe(b []byte) []string {
	b = b[:min(len(b), ProbeSize)]
	if len(bytes.TrimLeft(b, "\x00")) == 0 {
		return nil // zeros: the common case, and nothing to lose
	}
	var found []string
	for _, s := range signatures {
		if s.match(b) {
			found = append(found, s.name)
		}
	}
	return found
}
