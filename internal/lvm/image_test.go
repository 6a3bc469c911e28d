package lvm

import (
	"encoding/binary"
)

// Synthetic PV images, for tests that need no root: the layout lvm2 writes,
// built from the format's description (label in sector 1, one metadata area
// at 4096).

const (
	imgMDAStart = 4096
)

type imageSpec struct {
	pvid     string // 32 id characters
	mdaStart uint64 // default imgMDAStart
	mdaSize  uint64 // bytes, header included
	text     []byte // committed metadata text (a NUL is appended)
	textOff  uint64 // offset of the text in the area (>= 512); wraps if needed
	devSize  uint64 // image size; default: the end of the area
}

// buildImage returns a device image holding a label, a PV header and one
// metadata area with the text committed in slot 0.
func buildImage(s imageSpec) []byte {
	if s.mdaStart == 0 {
		s.mdaStart = imgMDAStart
	}
	if s.devSize == 0 {
		s.devSize = s.mdaStart + s.mdaSize
	}
	img := make([]byte, s.devSize)
	copy(img[512:], labelSector(s.pvid, s.devSize, s.mdaStart, s.mdaSize))
	if s.text != nil {
		text := append(append([]byte(nil), s.text...), 0)
		area := img[s.mdaStart : s.mdaStart+s.mdaSize]
		n := copy(area[s.textOff:], text)
		copy(area[mdaHeaderSize:], text[n:])
		writeMDAHeader(area, s.mdaStart, s.mdaSize, s.textOff, uint64(len(text)), lvmCRC(initialCRC, text))
	} else {
		writeMDAHeader(img[s.mdaStart:s.mdaStart+512], s.mdaStart, s.mdaSize, 0, 0, 0)
	}
	return img
}

// labelSector is a label in sector 1 with a PV header naming one data area
// after the metadata area.
func labelSector(pvid string, devSize, mdaStart, mdaSize uint64) []byte {
	lab := make([]byte, sectorSize)
	copy(lab, labelID)
	binary.LittleEndian.PutUint64(lab[8:], 1)
	binary.LittleEndian.PutUint32(lab[20:], 32)
	copy(lab[24:], labelType)
	copy(lab[32:], pvid)
	binary.LittleEndian.PutUint64(lab[64:], devSize)
	p := 72
	put := func(off, size uint64) {
		binary.LittleEndian.PutUint64(lab[p:], off)
		binary.LittleEndian.PutUint64(lab[p+8:], size)
		p += 16
	}
	put(mdaStart+mdaSize, 0) // data area: pe_start
	put(0, 0)
	put(mdaStart, mdaSize) // metadata area
	put(0, 0)
	binary.LittleEndian.PutUint32(lab[p:], 2) // extension version 2, flags "used"
	binary.LittleEndian.PutUint32(lab[p+4:], 1)
	fixLabelCRC(lab)
	return lab
}

func fixLabelCRC(lab []byte) {
	binary.LittleEndian.PutUint32(lab[16:], lvmCRC(initialCRC, lab[20:512]))
}

func writeMDAHeader(h []byte, start, size, off, tsize uint64, crc uint32) {
	copy(h[4:], mdaMagic)
	binary.LittleEndian.PutUint32(h[20:], mdaVersion)
	binary.LittleEndian.PutUint64(h[24:], start)
	binary.LittleEndian.PutUint64(h[32:], size)
	binary.LittleEndian.PutUint64(h[40:], off)
	binary.LittleEndian.PutUint64(h[48:], tsize)
	binary.LittleEndian.PutUint32(h[56:], crc)
	fixMDAHeaderCRC(h)
}

func fixMDAHeaderCRC(h []byte) {
	binary.LittleEndian.PutUint32(h[0:], lvmCRC(initialCRC, h[4:512]))
}

// readMem reads an image as ReadVG reads a device.
func readMem(img []byte, name, vgName string) *devResult {
	r := &devResult{info: DeviceInfo{Path: name}}
	r.err = readDevice(memSource(img), &r.info, vgName)
	return r
}
