package lvm

import (
	"encoding/binary"
	"fmt"
)

const (
	mdaHeaderSize = 512
	mdaMagic      = " LVM2 x[5A%r0N*>"
	mdaVersion    = 1
	rawLocnSize   = 24 // offset[8] size[8] checksum[4] flags[4]
	rawLocnsStart = 40 // after checksum[4] magic[16] version[4] start[8] size[8]

	// RawLocnIgnored marks a metadata area that lvm keeps but does not use
	// (pvchange --metadataignore y).
	RawLocnIgnored = 0x1
)

// MaxMetadataSize bounds the metadata text read from one area, whatever the
// area header claims. lvm's own areas are far smaller (vdsm uses 128 MiB areas
// and keeps the text to a fraction of that).
var MaxMetadataSize uint64 = 256 << 20

// RawLocn is a raw_locn of an mda_header: where a metadata text lies inside
// the area (Offset from the area's start), its size and its checksum.
type RawLocn struct {
	Offset, Size uint64
	Checksum     uint32
	Flags        uint32
}

// MDAHeader is a metadata area header.
type MDAHeader struct {
	Start, Size uint64  // bytes from the start of the device; the area's size
	Committed   RawLocn // slot 0: the committed metadata
	Precommit   RawLocn // slot 1: metadata written but not yet committed
}

// Ignored reports whether lvm has been told to ignore this area.
func (h *MDAHeader) Ignored() bool { return h.Committed.Flags&RawLocnIgnored != 0 }

// Empty reports whether the area holds no metadata (an orphan PV).
func (h *MDAHeader) Empty() bool { return h.Committed.Offset == 0 && h.Committed.Size == 0 }

// ParseMDAHeader checks and decodes the 512-byte header of a metadata area
// that the PV header says starts at byte start of the device.
func ParseMDAHeader(buf []byte, start uint64) (*MDAHeader, error) {
	if len(buf) < mdaHeaderSize {
		return nil, fmt.Errorf("mda header at %d: %d bytes, need %d", start, len(buf), mdaHeaderSize)
	}
	buf = buf[:mdaHeaderSize]
	if string(buf[4:20]) != mdaMagic {
		return nil, fmt.Errorf("mda header at %d: bad magic %q", start, printable(buf[4:20]))
	}
	want := binary.LittleEndian.Uint32(buf[0:4])
	if got := lvmCRC(initialCRC, buf[4:]); got != want {
		return nil, fmt.Errorf("mda header at %d: checksum %#08x, computed %#08x", start, want, got)
	}
	if v := binary.LittleEndian.Uint32(buf[20:24]); v != mdaVersion {
		return nil, fmt.Errorf("mda header at %d: version %d, want %d", start, v, mdaVersion)
	}
	h := &MDAHeader{
		Start: binary.LittleEndian.Uint64(buf[24:32]),
		Size:  binary.LittleEndian.Uint64(buf[32:40]),
	}
	if h.Start != start {
		return nil, fmt.Errorf("mda header at %d: says it starts at %d", start, h.Start)
	}
	if h.Size < mdaHeaderSize {
		return nil, fmt.Errorf("mda header at %d: area size %d smaller than its header", start, h.Size)
	}
	h.Committed = parseRawLocn(buf[rawLocnsStart:])
	h.Precommit = parseRawLocn(buf[rawLocnsStart+rawLocnSize:])
	return h, nil
}

func parseRawLocn(b []byte) RawLocn {
	return RawLocn{
		Offset:   binary.LittleEndian.Uint64(b[0:8]),
		Size:     binary.LittleEndian.Uint64(b[8:16]),
		Checksum: binary.LittleEndian.Uint32(b[16:20]),
		Flags:    binary.LittleEndian.Uint32(b[20:24]),
	}
}

// TextLocation is where a metadata text lies on the device: the first part at
// Offset1 (Len1 bytes) and, if the text wraps around the end of the circular
// area, the rest at Offset2 (Len2 bytes), right after the area's header.
// Offsets are absolute byte offsets on the device.
type TextLocation struct {
	Offset1, Len1 uint64
	Offset2, Len2 uint64
	Checksum      uint32
}

// Wrapped reports whether the text wraps around the end of the area.
func (t TextLocation) Wrapped() bool { return t.Len2 > 0 }

// Size is the text's total length in bytes.
func (t TextLocation) Size() uint64 { return t.Len1 + t.Len2 }

// CommittedText locates the committed metadata text of the area. deviceSize
// bounds the area (0: unknown, unchecked).
func (h *MDAHeader) CommittedText(deviceSize uint64) (TextLocation, error) {
	r := h.Committed
	if h.Empty() {
		return TextLocation{}, fmt.Errorf("mda at %d holds no metadata", h.Start)
	}
	// The area itself must lie on the device.
	end, ok := add64(h.Start, h.Size)
	if !ok || (deviceSize > 0 && end > deviceSize) {
		return TextLocation{}, fmt.Errorf("mda at %d: area of %d bytes runs past the device end (%d)", h.Start, h.Size, deviceSize)
	}
	// lvm2's checks (format-text.c), plus: the text never starts in the header.
	if r.Offset < mdaHeaderSize || r.Offset >= h.Size {
		return TextLocation{}, fmt.Errorf("mda at %d: metadata offset %d outside the area [%d, %d)", h.Start, r.Offset, mdaHeaderSize, h.Size)
	}
	if r.Size == 0 || r.Size > h.Size-mdaHeaderSize {
		return TextLocation{}, fmt.Errorf("mda at %d: metadata size %d does not fit the area (%d bytes)", h.Start, r.Size, h.Size-mdaHeaderSize)
	}
	if r.Size > MaxMetadataSize {
		return TextLocation{}, fmt.Errorf("mda at %d: metadata size %d over the limit %d", h.Start, r.Size, MaxMetadataSize)
	}
	loc := TextLocation{Offset1: h.Start + r.Offset, Len1: r.Size, Checksum: r.Checksum}
	if r.Offset+r.Size > h.Size { // cannot overflow: both are below h.Size
		wrap := r.Offset + r.Size - h.Size
		loc.Len1 = r.Size - wrap
		loc.Offset2 = h.Start + mdaHeaderSize
		loc.Len2 = wrap
	}
	return loc, nil
}

// checkText verifies a metadata text read from loc against its checksum, the
// two parts chained as lvm2 does.
func checkText(loc TextLocation, part1, part2 []byte) error {
	crc := lvmCRC(initialCRC, part1)
	crc = lvmCRC(crc, part2)
	if crc != loc.Checksum {
		return &ChecksumError{Offset: loc.Offset1, Size: loc.Size(), Want: loc.Checksum, Got: crc}
	}
	return nil
}

// ChecksumError is a metadata text whose checksum does not match its mda header.
type ChecksumError struct {
	Offset, Size uint64
	Want, Got    uint32
}

func (e *ChecksumError) Error() string {
	return fmt.Sprintf("metadata text at %d (%d bytes): checksum %#08x in mda header, computed %#08x", e.Offset, e.Size, e.Want, e.Got)
}

func add64(a, b uint64) (uint64, bool) {
	s := a + b
	return s, s >= a
}

func mul64(a, b uint64) (uint64, bool) {
	if a == 0 || b == 0 {
		return 0, true
	}
	p := a * b
	return p, p/b == a
}
