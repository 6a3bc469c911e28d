package mailbox

import (
	"bytes"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
)

// The geometry of vdsm's storage mailbox (design/mailbox-format.md).
const (
	BlockSize         = 4096                    // one host's mailbox, and the unit of all I/O
	MessageSize       = 64                      // one slot
	SlotsPerMailbox   = BlockSize / MessageSize // 64: slot 63 only carries the checksum
	MessagesPerMbox   = SlotsPerMailbox - 1     // 63 usable slots
	NumMailboxes      = 250                     // mailbox 0 is the events block, 1..249 are hosts
	MinHostID         = 1
	MaxHostID         = NumMailboxes - 1         // 249
	UsedSize          = NumMailboxes * BlockSize // 1,024,000 bytes read by one full scan
	MaxSizeMiB        = 0xFFFFFFFF               // the largest size an extend request may carry
	checksumOffset    = BlockSize - 4
	extendSizeOffset  = 37 // bytes 37..52: the size in MiB as 16 hex digits
	extendSizeDigits  = 16
	extendMatchLength = extendSizeOffset // vdsm matches a reply to its request on bytes 0..36
)

var (
	extendOpcode = [4]byte{'x', 't', 'n', 'd'}
	eventCode    = [4]byte{0, 'e', 'v', 't'}
	// CleanMessage acknowledges a reply (host → SPM) and the acknowledgement (SPM → host).
	CleanMessage = Message(bytes.Repeat([]byte{1}, MessageSize))
)

// messageVersion is the version byte lvwatch writes; the SPM only requires it to be non-zero.
const messageVersion = '1'

// ValidHostID reports an error unless id is a host's mailbox (1..249).
func ValidHostID(id int) error {
	if id < MinHostID || id > MaxHostID {
		return fmt.Errorf("host id %d out of range %d..%d", id, MinHostID, MaxHostID)
	}
	return nil
}

// UUID is a UUID in RFC 4122 byte order (the order of its printed hex digits).
type UUID [16]byte

// ParseUUID parses the 8-4-4-4-12 hex form, in either case.
func ParseUUID(s string) (UUID, error) {
	var u UUID
	if len(s) != 36 || s[8] != '-' || s[13] != '-' || s[18] != '-' || s[23] != '-' {
		return u, fmt.Errorf("uuid %q: not in the 8-4-4-4-12 hex form", s)
	}
	digits := s[0:8] + s[9:13] + s[14:18] + s[19:23] + s[24:36]
	if _, err := hex.Decode(u[:], []byte(digits)); err != nil {
		return u, fmt.Errorf("uuid %q: %w", s, err)
	}
	return u, nil
}

// String returns the lowercase 8-4-4-4-12 form.
func (u UUID) String() string {
	h := hex.EncodeToString(u[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}

// packUUID writes u the way vdsm does: the UUID as a 128-bit integer, little-endian,
// which is the RFC byte string reversed.
func packUUID(dst []byte, u UUID) {
	for i := range u {
		dst[15-i] = u[i]
	}
}

func unpackUUID(src []byte) UUID {
	var u UUID
	for i := range u {
		u[i] = src[15-i]
	}
	return u
}

// Message is one 64-byte slot.
type Message [MessageSize]byte

// Kind is what a slot holds.
type Kind int

const (
	KindEmpty   Kind = iota // first byte 0
	KindClean               // 64 × 0x01
	KindExtend              // version, "xtnd", ...
	KindUnknown             // a non-empty slot with another opcode
)

func (k Kind) String() string {
	switch k {
	case KindEmpty:
		return "empty"
	case KindClean:
		return "clean"
	case KindExtend:
		return "extend"
	}
	return "unknown"
}

// Kind classifies m by its first five bytes (and all of them for CLEAN).
func (m Message) Kind() Kind {
	switch {
	case m[0] == 0:
		return KindEmpty
	case m == CleanMessage:
		return KindClean
	case [4]byte(m[1:5]) == extendOpcode:
		return KindExtend
	}
	return KindUnknown
}

// Extend is an extend request, or its reply: SizeMiB is the size asked for, and in a
// reply the size granted (0 for failure).
type Extend struct {
	Domain  UUID // the VG
	Volume  UUID // the LV
	SizeMiB uint64
}

// Encode returns the 64-byte message for e. It fails for sizes above MaxSizeMiB.
func (e Extend) Encode() (Message, error) {
	var m Message
	if e.SizeMiB > MaxSizeMiB {
		return m, fmt.Errorf("extend size %d MiB exceeds the mailbox limit %d MiB", e.SizeMiB, uint64(MaxSizeMiB))
	}
	m[0] = messageVersion
	copy(m[1:5], extendOpcode[:])
	packUUID(m[5:21], e.Domain)
	packUUID(m[21:37], e.Volume)
	m.putSize(e.SizeMiB)
	return m, nil
}

// errMalformedSize marks an extend message whose size field does not parse; its domain
// and volume are still known, so the SPM can still answer it with a failure.
var errMalformedSize = errors.New("malformed size field")

// DecodeExtend decodes an extend message. Like vdsm it requires a non-zero version and
// the opcode and ignores the padding. A size field that is not 16 hex digits, or is
// above MaxSizeMiB, is an error wrapping errMalformedSize, with Domain and Volume set.
func DecodeExtend(m Message) (Extend, error) {
	var e Extend
	if m.Kind() != KindExtend {
		return e, fmt.Errorf("not an extend message (%s)", m.Kind())
	}
	e.Domain = unpackUUID(m[5:21])
	e.Volume = unpackUUID(m[21:37])
	field := m[extendSizeOffset : extendSizeOffset+extendSizeDigits]
	size, err := strconv.ParseUint(string(field), 16, 64)
	if err != nil {
		return e, fmt.Errorf("extend %s/%s: %w %q", e.Domain, e.Volume, errMalformedSize, field)
	}
	if size > MaxSizeMiB {
		return e, fmt.Errorf("extend %s/%s: %w: %d MiB exceeds %d", e.Domain, e.Volume, errMalformedSize, size, uint64(MaxSizeMiB))
	}
	e.SizeMiB = size
	return e, nil
}

// replyTo reports whether reply answers request: the same version, opcode, domain and
// volume (the bytes vdsm matches on). The size is left to the caller.
func replyTo(reply, request *Message) bool {
	return reply.Kind() == KindExtend && [extendMatchLength]byte(reply[:extendMatchLength]) == [extendMatchLength]byte(request[:extendMatchLength])
}

// replyFor returns the reply to request, an extend message: its bytes 0..36 (which a
// vdsm host compares) copied, and sizeMiB, the size granted or 0 for failure.
func replyFor(request Message, sizeMiB uint64) Message {
	var m Message
	copy(m[:extendMatchLength], request[:extendMatchLength])
	m.putSize(sizeMiB)
	return m
}

// putSize writes the size field as 16 lowercase hex digits and the '0' padding after it.
func (m *Message) putSize(sizeMiB uint64) {
	const hexDigits = "0123456789abcdef"
	for i, v := extendSizeDigits-1, sizeMiB; i >= 0; i, v = i-1, v>>4 {
		m[extendSizeOffset+i] = hexDigits[v&0xf]
	}
	for i := extendSizeOffset + extendSizeDigits; i < MessageSize; i++ {
		m[i] = '0'
	}
}

// Mailbox is one host's 4 KiB mailbox: 63 slots, then the checksum in its last 4 bytes.
type Mailbox [BlockSize]byte

// Slot returns a copy of slot i (0..62).
func (b *Mailbox) Slot(i int) Message { return Message(b[i*MessageSize : (i+1)*MessageSize]) }

// SetSlot overwrites slot i (0..62).
func (b *Mailbox) SetSlot(i int, m Message) { copy(b[i*MessageSize:], m[:]) }

// Checksum computes the checksum of the first 4092 bytes: their sum as unsigned bytes.
func (b *Mailbox) Checksum() uint32 {
	var sum uint32
	for _, c := range b[:checksumOffset] {
		sum += uint32(c)
	}
	return sum
}

// StoredChecksum returns the checksum held in the last 4 bytes (little-endian).
func (b *Mailbox) StoredChecksum() uint32 {
	return binary.LittleEndian.Uint32(b[checksumOffset:])
}

// Seal writes the checksum into the last 4 bytes, as a host does before every write.
func (b *Mailbox) Seal() { binary.LittleEndian.PutUint32(b[checksumOffset:], b.Checksum()) }

// Valid reports whether the stored checksum matches the content. An SPM acts on a
// mailbox only when it is valid; a torn or corrupt one fails this.
func (b *Mailbox) Valid() bool { return b.StoredChecksum() == b.Checksum() }

// EventID is the 16 random bytes of an events block.
type EventID [16]byte

// EncodeEvent returns the events block a host writes at offset 0 of the inbox after
// each write to its mailbox: "\0evt", the id, then zeros.
func EncodeEvent(id EventID) Mailbox {
	var b Mailbox
	copy(b[0:4], eventCode[:])
	copy(b[4:20], id[:])
	return b
}

// DecodeEvent returns the id of an events block; ok is false when the block does not
// start with "\0evt" (an SPM that has never seen an event reads zeros there).
func DecodeEvent(b *Mailbox) (id EventID, ok bool) {
	return EventID(b[4:20]), [4]byte(b[0:4]) == eventCode
}
