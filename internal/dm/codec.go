package dm

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The ioctl structures are native-endian C structs; their field offsets come from
// x/sys/unix so that they cannot drift from the kernel ABI it was generated from.
const (
	headerSize     = unix.SizeofDmIoctl
	offVersion     = unsafe.Offsetof(unix.DmIoctl{}.Version)
	offDataSize    = unsafe.Offsetof(unix.DmIoctl{}.Data_size)
	offDataStart   = unsafe.Offsetof(unix.DmIoctl{}.Data_start)
	offTargetCount = unsafe.Offsetof(unix.DmIoctl{}.Target_count)
	offOpenCount   = unsafe.Offsetof(unix.DmIoctl{}.Open_count)
	offFlags       = unsafe.Offsetof(unix.DmIoctl{}.Flags)
	offEventNr     = unsafe.Offsetof(unix.DmIoctl{}.Event_nr)
	offDev         = unsafe.Offsetof(unix.DmIoctl{}.Dev)
	offName        = unsafe.Offsetof(unix.DmIoctl{}.Name)
	offUUID        = unsafe.Offsetof(unix.DmIoctl{}.Uuid)

	specSize      = unix.SizeofDmTargetSpec
	offSpecStart  = unsafe.Offsetof(unix.DmTargetSpec{}.Sector_start)
	offSpecLength = unsafe.Offsetof(unix.DmTargetSpec{}.Length)
	offSpecNext   = unsafe.Offsetof(unix.DmTargetSpec{}.Next)
	offSpecType   = unsafe.Offsetof(unix.DmTargetSpec{}.Target_type)

	offNameListDev  = unsafe.Offsetof(unix.DmNameList{}.Dev)
	offNameListNext = unsafe.Offsetof(unix.DmNameList{}.Next)
	offNameListName = unsafe.Offsetof(unix.DmNameList{}.Name)

	// The kernel aligns each record of a reply to 8 bytes from the start of the buffer.
	replyAlign = 8
)

var native = binary.NativeEndian

// header is the dm_ioctl struct that starts every request and reply.
type header struct {
	version     [3]uint32
	dataSize    uint32 // bytes of the whole buffer in use, header included
	dataStart   uint32 // offset of the payload from the start of the buffer
	targetCount uint32
	openCount   int32
	flags       uint32
	eventNr     uint32
	dev         uint64 // the kernel's huge_encode_dev, which unix.Major/Minor decode
	name, uuid  string
}

// encodeHeader writes h at the start of buf, which is at least headerSize long.
func encodeHeader(buf []byte, h header) error {
	if err := putString(buf[offName:offUUID], h.name, "name"); err != nil {
		return err
	}
	if err := putString(buf[offUUID:offUUID+unix.DM_UUID_LEN], h.uuid, "uuid"); err != nil {
		return err
	}
	for i, v := range h.version {
		native.PutUint32(buf[offVersion+4*uintptr(i):], v)
	}
	native.PutUint32(buf[offDataSize:], h.dataSize)
	native.PutUint32(buf[offDataStart:], h.dataStart)
	native.PutUint32(buf[offTargetCount:], h.targetCount)
	native.PutUint32(buf[offOpenCount:], uint32(h.openCount))
	native.PutUint32(buf[offFlags:], h.flags)
	native.PutUint32(buf[offEventNr:], h.eventNr)
	native.PutUint64(buf[offDev:], h.dev)
	return nil
}

// putString writes s NUL-terminated into the fixed field dst.
func putString(dst []byte, s, what string) error {
	if len(s) >= len(dst) {
		return fmt.Errorf("dm: %s %q longer than %d bytes", what, s, len(dst)-1)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return fmt.Errorf("dm: %s %q contains a NUL byte", what, s)
	}
	copy(dst, s)
	return nil
}

// decodeHeader reads and checks the header of a reply held in buf.
// On success buf[h.dataStart:h.dataSize] is the payload, maybe empty.
func decodeHeader(buf []byte) (header, error) {
	var h header
	if len(buf) < headerSize {
		return h, badReply("%d bytes, shorter than the %d-byte header", len(buf), headerSize)
	}
	for i := range h.version {
		h.version[i] = native.Uint32(buf[offVersion+4*uintptr(i):])
	}
	h.dataSize = native.Uint32(buf[offDataSize:])
	h.dataStart = native.Uint32(buf[offDataStart:])
	h.targetCount = native.Uint32(buf[offTargetCount:])
	h.openCount = int32(native.Uint32(buf[offOpenCount:]))
	h.flags = native.Uint32(buf[offFlags:])
	h.eventNr = native.Uint32(buf[offEventNr:])
	h.dev = native.Uint64(buf[offDev:])
	if h.version[0] != unix.DM_VERSION_MAJOR {
		return h, badReply("interface version %d.%d.%d, want major %d",
			h.version[0], h.version[1], h.version[2], unix.DM_VERSION_MAJOR)
	}
	if uint64(h.dataSize) > uint64(len(buf)) || h.dataStart < headerSize {
		return h, badReply("payload [%d, %d) outside the %d-byte buffer", h.dataStart, h.dataSize, len(buf))
	}
	// Replies without data end before the payload would start.
	h.dataStart = min(h.dataStart, h.dataSize)
	var err error
	if h.name, err = cString(buf[offName:offUUID]); err != nil {
		return h, badReply("device name: %v", err)
	}
	if h.uuid, err = cString(buf[offUUID : offUUID+unix.DM_UUID_LEN]); err != nil {
		return h, badReply("device uuid: %v", err)
	}
	return h, nil
}

// cString returns the NUL-terminated string at the start of b.
func cString(b []byte) (string, error) {
	n := bytes.IndexByte(b, 0)
	if n < 0 {
		return "", fmt.Errorf("no NUL terminator within %d bytes", len(b))
	}
	return string(b[:n]), nil
}

func alignUp(n, a int) int { return (n + a - 1) &^ (a - 1) }

// decodeNameList reads the payload of a DM_LIST_DEVICES reply: a chain of
// dm_name_list records, each followed (since ioctl 4.37) by the device's event
// number and flags and, when asked with DM_UUID_FLAG, its uuid.
func decodeNameList(buf []byte, h header) ([]Device, error) {
	end := int(h.dataSize)
	off := int(h.dataStart)
	var devs []Device
	for {
		if off == end && len(devs) == 0 {
			return nil, nil // no devices: the kernel sends an empty payload
		}
		if end-off < int(offNameListName) {
			return nil, badReply("device list entry at %d: runs past the payload end %d", off, end)
		}
		dev := native.Uint64(buf[off+int(offNameListDev):])
		next := int(native.Uint32(buf[off+int(offNameListNext):]))
		if dev == 0 && len(devs) == 0 {
			return nil, nil // older kernels mark an empty list with dev 0
		}
		entryEnd := end
		if next != 0 {
			if next <= int(offNameListName) || next > end-off {
				return nil, badReply("device list entry at %d: next offset %d outside the payload", off, next)
			}
			entryEnd = off + next
		}
		nameAt := off + int(offNameListName)
		name, err := cString(buf[nameAt:entryEnd])
		if err != nil {
			return nil, badReply("device list entry at %d: name: %v", off, err)
		}
		d := Device{Name: name, Major: unix.Major(dev), Minor: unix.Minor(dev)}
		// The event number and flags follow the name when the entry is long enough.
		extra := alignUp(nameAt+len(name)+1, replyAlign)
		if extra+8 <= entryEnd {
			flags := native.Uint32(buf[extra+4:])
			if flags&unix.DM_NAME_LIST_FLAG_HAS_UUID != 0 {
				if d.UUID, err = cString(buf[extra+8 : entryEnd]); err != nil {
					return nil, badReply("device list entry %q: uuid: %v", name, err)
				}
			}
		}
		devs = append(devs, d)
		if next == 0 {
			return devs, nil
		}
		off = entryEnd
	}
}

// decodeTargets reads the payload of a DM_TABLE_STATUS reply: h.targetCount
// dm_target_spec records, each followed by its NUL-terminated parameters.
// Unlike in a load request, each record's next is an offset from the start of
// the payload, not from the record.
func decodeTargets(buf []byte, h header) ([]Target, error) {
	start, end := int(h.dataStart), int(h.dataSize)
	// Every record takes at least specSize+1 bytes; never trust the count for an allocation.
	targets := make([]Target, 0, min(int(h.targetCount), (end-start)/(specSize+1)))
	at := start
	for i := 0; i < int(h.targetCount); i++ {
		if at > end || end-at < specSize {
			return nil, badReply("target %d at %d: runs past the payload end %d", i, at, end)
		}
		typ, err := cString(buf[at+int(offSpecType) : at+specSize])
		if err != nil {
			return nil, badReply("target %d: type: %v", i, err)
		}
		params, err := cString(buf[at+specSize : end])
		if err != nil {
			return nil, badReply("target %d (%s): parameters: %v", i, typ, err)
		}
		targets = append(targets, Target{
			Start:  native.Uint64(buf[at+int(offSpecStart):]),
			Length: native.Uint64(buf[at+int(offSpecLength):]),
			Type:   typ,
			Params: params,
		})
		next := start + int(native.Uint32(buf[at+int(offSpecNext):]))
		if i+1 < int(h.targetCount) && next < at+specSize+len(params)+1 {
			return nil, badReply("target %d: next offset %d overlaps it", i, next-start)
		}
		at = next
	}
	return targets, nil
}

// encodeTargets builds the payload of a DM_TABLE_LOAD request. Here each
// record's next is the offset from that record to the following one.
func encodeTargets(table []Target) ([]byte, error) {
	var out []byte
	for i, t := range table {
		if t.Type == "" || len(t.Type) >= unix.DM_MAX_TYPE_NAME || strings.IndexByte(t.Type, 0) >= 0 {
			return nil, fmt.Errorf("dm: target %d: bad type %q", i, t.Type)
		}
		if strings.IndexByte(t.Params, 0) >= 0 {
			return nil, fmt.Errorf("dm: target %d: parameters contain a NUL byte", i)
		}
		size := alignUp(specSize+len(t.Params)+1, replyAlign)
		rec := make([]byte, size)
		native.PutUint64(rec[offSpecStart:], t.Start)
		native.PutUint64(rec[offSpecLength:], t.Length)
		native.PutUint32(rec[offSpecNext:], uint32(size))
		copy(rec[offSpecType:], t.Type)
		copy(rec[specSize:], t.Params)
		out = append(out, rec...)
	}
	return out, nil
}
