package lvm

import (
	"errors"
	"fmt"
)

// DeviceInfo is what one device holds of LVM: its label and metadata areas.
type DeviceInfo struct {
	Path         string
	Size         uint64 // bytes
	Major, Minor uint32 // 0:0 for an image file
	IsBlock      bool
	Direct       bool // read with O_DIRECT
	Label        *Label
	Areas        []AreaInfo
}

// AreaInfo describes one metadata area of a PV.
type AreaInfo struct {
	Index  int // 1-based, in PV header order
	Locn   DiskLocn
	Header *MDAHeader   // nil if unreadable
	Text   TextLocation // of the committed metadata; zero if none
	VGName string       // the VG the committed text belongs to ("" if none)
	Err    error        // why the area could not be read, if it could not

	text []byte // the committed text, read and checksummed, when wanted
}

// readRetries is how often an area is read again when its text does not
// match its checksum: lvm on another host may have rewritten the area
// between the reads of the header and of the text.
const readRetries = 3

// prefixCheckSize: texts larger than this are first read in part to check
// whose VG they are before the rest is read.
const prefixCheckSize = 64 << 10

// headReadSize is the first read of a device: label sectors and, normally,
// the first metadata area's header at 4096.
const headReadSize = 8192

// readDevice reads the label of src and the headers of its metadata areas, and
// the full committed text of each area whose VG is wantVG ("" for none;
// "*" for every VG).
func readDevice(src source, info *DeviceInfo, wantVG string) error {
	info.Size = src.size()
	if info.Size < labelScanSize {
		return fmt.Errorf("%w: device of %d bytes", ErrNoLabel, info.Size)
	}
	head, err := src.readAt(0, min(info.Size, headReadSize))
	if err != nil {
		return err
	}
	label, err := ParseLabel(head)
	if err != nil {
		return err
	}
	info.Label = label
	for i, locn := range label.MetadataAreas {
		a := AreaInfo{Index: i + 1, Locn: locn}
		for attempt := 0; attempt < readRetries; attempt++ {
			var cached []byte
			if attempt == 0 && locn.Offset <= uint64(len(head)) && uint64(len(head))-locn.Offset >= mdaHeaderSize {
				cached = head[locn.Offset : locn.Offset+mdaHeaderSize]
			}
			retry := readArea(src, &a, cached, wantVG)
			if !retry {
				break
			}
		}
		info.Areas = append(info.Areas, a)
	}
	return nil
}

// readArea reads one metadata area's header and, if wanted, its committed
// text. It reports whether a checksum mismatch makes a retry worthwhile.
func readArea(src source, a *AreaInfo, cachedHeader []byte, wantVG string) (retry bool) {
	a.Header, a.Text, a.VGName, a.text, a.Err = nil, TextLocation{}, "", nil, nil
	buf := cachedHeader
	if buf == nil {
		var err error
		if buf, err = src.readAt(a.Locn.Offset, mdaHeaderSize); err != nil {
			a.Err = fmt.Errorf("mda%d header: %w", a.Index, err)
			return false
		}
	}
	h, err := ParseMDAHeader(buf, a.Locn.Offset)
	if err != nil {
		a.Err = fmt.Errorf("mda%d: %w", a.Index, err)
		return false
	}
	if a.Locn.Size != 0 && h.Size > a.Locn.Size {
		a.Err = fmt.Errorf("mda%d at %d: header says %d bytes, PV header %d", a.Index, h.Start, h.Size, a.Locn.Size)
		return false
	}
	a.Header = h
	if h.Ignored() || h.Empty() {
		return false
	}
	loc, err := h.CommittedText(src.size())
	if err != nil {
		a.Err = fmt.Errorf("mda%d: %w", a.Index, err)
		return false
	}
	a.Text = loc
	if wantVG == "" {
		return false
	}
	if loc.Size() > prefixCheckSize && wantVG != "*" {
		prefix, err := readText(src, loc, 256)
		if err != nil {
			a.Err = fmt.Errorf("mda%d text: %w", a.Index, err)
			return false
		}
		a.VGName = textVGName(prefix)
		if a.VGName != wantVG {
			return false
		}
	}
	text, err := readText(src, loc, loc.Size())
	if err != nil {
		a.Err = fmt.Errorf("mda%d text: %w", a.Index, err)
		return false
	}
	a.VGName = textVGName(text)
	if err := checkText(loc, text[:loc.Len1], text[loc.Len1:]); err != nil {
		a.Err = fmt.Errorf("mda%d: %w", a.Index, err)
		return wantVG == "*" || a.VGName == wantVG
	}
	if wantVG == "*" || a.VGName == wantVG {
		a.text = text
	}
	return false
}

// readText reads the first n bytes of the text at loc into a new buffer,
// joining the two parts of a wrapped text.
func readText(src source, loc TextLocation, n uint64) ([]byte, error) {
	n = min(n, loc.Size())
	out := make([]byte, 0, n)
	n1 := min(n, loc.Len1)
	p, err := src.readAt(loc.Offset1, n1)
	if err != nil {
		return nil, err
	}
	out = append(out, p...)
	if n > n1 {
		p, err := src.readAt(loc.Offset2, n-n1)
		if err != nil {
			return nil, err
		}
		out = append(out, p...)
	}
	return out, nil
}

// textVGName returns the name a metadata text starts with, read as lvm2 does:
// up to the first space or '{'.
func textVGName(text []byte) string {
	for i, c := range text {
		if isSpace(c) || c == '{' || c == 0 || i >= 128 {
			return string(text[:i])
		}
	}
	return string(text)
}

// InspectDevice reads the LVM label and metadata area headers of one device or
// image file, without reading metadata texts. It is for diagnostics and tests.
func InspectDevice(path string) (*DeviceInfo, error) {
	d, err := openDirect(path)
	if err != nil {
		return nil, err
	}
	defer d.close()
	info := &DeviceInfo{Path: path, IsBlock: d.isBlk, Direct: d.direct}
	if d.isBlk {
		info.Major, info.Minor = devMajor(d.rdev), devMinor(d.rdev)
	}
	if err := readDevice(d, info, ""); err != nil {
		return info, fmt.Errorf("%s: %w", path, err)
	}
	return info, nil
}

// ReadMetadataText returns the committed metadata text of every readable
// metadata area of a device or image file, checksums verified, in area order.
// It is for diagnostics, tests and capturing fuzz seeds.
func ReadMetadataText(path string) ([][]byte, error) {
	d, err := openDirect(path)
	if err != nil {
		return nil, err
	}
	defer d.close()
	info := &DeviceInfo{Path: path}
	if err := readDevice(d, info, "*"); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	var out [][]byte
	var errs []error
	for _, a := range info.Areas {
		if a.Err != nil {
			errs = append(errs, a.Err)
		}
		if a.text != nil {
			out = append(out, a.text)
		}
	}
	if len(out) == 0 {
		if len(errs) > 0 {
			return nil, fmt.Errorf("%s: %w", path, errors.Join(errs...))
		}
		return nil, fmt.Errorf("%s: no metadata", path)
	}
	return out, nil
}
