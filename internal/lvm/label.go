package lvm

import (
	"encoding/binary"
	"errors"
	"fmt"
)

const (
	sectorSize       = 512
	labelScanSectors = 4 // the label is in one of the first four sectors
	labelScanSize    = labelScanSectors * sectorSize
	labelHeaderSize  = 32 // id[8] sector[8] crc[4] offset[4] type[8]
	pvHeaderSize     = idLen + 8
	diskLocnSize     = 16
	labelID          = "LABELONE"
	labelType        = "LVM2 001"
	idLen            = 32
)

// ErrNoLabel means the device carries no valid LVM2 label: it is not a PV.
// Errors that say why (for example a label whose checksum is wrong) wrap it.
var ErrNoLabel = errors.New("no LVM2 label")

// DiskLocn is one entry of a PV header's area lists: a byte offset from the
// start of the device and a size in bytes (0 for "up to the end" in data areas).
type DiskLocn struct {
	Offset, Size uint64
}

// Label is a PV's label sector and PV header.
type Label struct {
	Sector        uint64     // sector the label was found in (0..3)
	PVID          string     // the PV uuid, 32 characters without dashes
	DeviceSize    uint64     // bytes, as recorded by pvcreate/pvresize
	DataAreas     []DiskLocn // normally one: pe_start and 0
	MetadataAreas []DiskLocn // zero, one or two metadata areas
	ExtVersion    uint32     // PV header extension version, 0 if absent
	ExtFlags      uint32
}

// ParseLabel finds and checks the LVM2 label in the first four sectors of a
// device (buf holds at least the first 2048 bytes) and decodes its PV header.
//
// Like lvm2, a sector that starts with "LABELONE" but names another sector or
// fails its checksum is skipped, and the first good label wins. Unlike lvm2,
// a sector must start with "LABELONE" to count at all.
func ParseLabel(buf []byte) (*Label, error) {
	if len(buf) < labelScanSize {
		return nil, fmt.Errorf("label: need the first %d bytes of the device, have %d", labelScanSize, len(buf))
	}
	var skipped []string
	for s := uint64(0); s < labelScanSectors; s++ {
		sec := buf[s*sectorSize : (s+1)*sectorSize]
		if string(sec[:8]) != labelID {
			continue
		}
		if got := binary.LittleEndian.Uint64(sec[8:16]); got != s {
			skipped = append(skipped, fmt.Sprintf("label in sector %d names sector %d", s, got))
			continue
		}
		want := binary.LittleEndian.Uint32(sec[16:20])
		if got := lvmCRC(initialCRC, sec[20:]); got != want {
			skipped = append(skipped, fmt.Sprintf("label in sector %d has checksum %#08x, computed %#08x", s, want, got))
			continue
		}
		if string(sec[24:32]) != labelType {
			skipped = append(skipped, fmt.Sprintf("label in sector %d has type %q, not %q", s, printable(sec[24:32]), labelType))
			continue
		}
		l, err := parsePVHeader(sec)
		if err != nil {
			return nil, fmt.Errorf("label in sector %d: %w", s, err)
		}
		l.Sector = s
		return l, nil
	}
	if len(skipped) > 0 {
		return nil, fmt.Errorf("%w: %s", ErrNoLabel, joinNotes(skipped))
	}
	return nil, ErrNoLabel
}

// parsePVHeader decodes the PV header inside a checked label sector, keeping
// every list inside the sector as lvm2's label_check_pv_layout does.
func parsePVHeader(sec []byte) (*Label, error) {
	off := uint64(binary.LittleEndian.Uint32(sec[20:24]))
	if off < labelHeaderSize || off > sectorSize-pvHeaderSize {
		return nil, fmt.Errorf("PV header offset %d outside the label sector", off)
	}
	pvid := string(sec[off : off+idLen])
	if err := checkIDChars(pvid); err != nil {
		return nil, fmt.Errorf("PV uuid: %w", err)
	}
	l := &Label{
		PVID:       pvid,
		DeviceSize: binary.LittleEndian.Uint64(sec[off+idLen : off+idLen+8]),
	}
	p := off + pvHeaderSize
	readList := func(what string) ([]DiskLocn, error) {
		var list []DiskLocn
		for {
			if p+diskLocnSize > sectorSize {
				return nil, fmt.Errorf("%s list runs past the label sector", what)
			}
			d := DiskLocn{
				Offset: binary.LittleEndian.Uint64(sec[p : p+8]),
				Size:   binary.LittleEndian.Uint64(sec[p+8 : p+16]),
			}
			p += diskLocnSize
			if d.Offset == 0 {
				return list, nil
			}
			list = append(list, d)
		}
	}
	var err error
	if l.DataAreas, err = readList("data area"); err != nil {
		return nil, err
	}
	if l.MetadataAreas, err = readList("metadata area"); err != nil {
		return nil, err
	}
	if p+8 <= sectorSize {
		l.ExtVersion = binary.LittleEndian.Uint32(sec[p : p+4])
		l.ExtFlags = binary.LittleEndian.Uint32(sec[p+4 : p+8])
	}
	return l, nil
}

// idChars are the characters lvm2 uses in uuids (lib/id/id.c).
const idChars = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ!#"

var idCharOK = func() (t [256]bool) {
	for i := 0; i < len(idChars); i++ {
		t[idChars[i]] = true
	}
	return t
}()

func checkIDChars(id string) error {
	for i := 0; i < len(id); i++ {
		if !idCharOK[id[i]] {
			return fmt.Errorf("invalid character %q at %d", id[i], i)
		}
	}
	return nil
}

// parseID reads a uuid as lvm2 writes it in metadata: 32 id characters with
// dashes anywhere (normally 6-4-4-4-4-4-6). It returns the 32 characters.
func parseID(s string) (string, error) {
	raw := make([]byte, 0, idLen)
	for i := 0; i < len(s); i++ {
		if s[i] == '-' {
			continue
		}
		if len(raw) == idLen {
			return "", fmt.Errorf("uuid %q: too many characters", truncate(s))
		}
		raw = append(raw, s[i])
	}
	if len(raw) != idLen {
		return "", fmt.Errorf("uuid %q: %d characters, want %d", truncate(s), len(raw), idLen)
	}
	if err := checkIDChars(string(raw)); err != nil {
		return "", fmt.Errorf("uuid %q: %w", truncate(s), err)
	}
	return string(raw), nil
}

// FormatID writes a 32-character uuid in lvm2's display form, 6-4-4-4-4-4-6.
// Anything else is returned unchanged.
func FormatID(raw string) string {
	if len(raw) != idLen {
		return raw
	}
	groups := [...]int{6, 4, 4, 4, 4, 4, 6}
	out := make([]byte, 0, idLen+6)
	p := 0
	for i, g := range groups {
		if i > 0 {
			out = append(out, '-')
		}
		out = append(out, raw[p:p+g]...)
		p += g
	}
	return string(out)
}

// printable quotes untrusted bytes for an error message.
func printable(b []byte) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c >= 0x20 && c < 0x7f {
			out = append(out, c)
		} else {
			out = append(out, '.')
		}
	}
	return string(out)
}

// truncate shortens an untrusted string for an error message.
func truncate(s string) string {
	const max = 64
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}

func joinNotes(notes []string) string {
	out := ""
	for i, n := range notes {
		if i > 0 {
			out += "; "
		}
		out += n
	}
	return out
}
