package mailbox

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The reference request of testdata/vdsm (bytes written by vdsm).
var (
	refDomain = mustUUID("8adbc85e-e554-4ae0-b318-8a5465fe5fe1")
	refVolume = mustUUID("d772f1c6-3ebb-43c3-a42e-73fcd8255a5f")
	refExtend = Extend{Domain: refDomain, Volume: refVolume, SizeMiB: 5120}
)

const refHost = 7

func mustUUID(s string) UUID {
	u, err := ParseUUID(s)
	if err != nil {
		panic(err)
	}
	return u
}

// refBlock returns one of the reference blocks written by vdsm (testdata/vdsm).
func refBlock(t testing.TB, name string) Mailbox {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", "vdsm", name))
	if err != nil {
		t.Fatalf("vdsm reference block: %v", err)
	}
	if len(b) != BlockSize {
		t.Fatalf("%s: %d bytes, want %d", name, len(b), BlockSize)
	}
	return Mailbox(b)
}

func TestGoldenRequest(t *testing.T) {
	want := refBlock(t, "host7-request-mailbox.bin")

	// Encode: lvwatch writes exactly vdsm's bytes.
	msg, err := refExtend.Encode()
	if err != nil {
		t.Fatal(err)
	}
	var mb Mailbox
	mb.SetSlot(0, msg)
	mb.Seal()
	if mb != want {
		t.Errorf("encoded request mailbox differs from vdsm's:\n got %x\nwant %x", mb[:64], want[:64])
	}
	if got := want.StoredChecksum(); got != 6452 {
		t.Errorf("reference checksum = %#x, want 6452 (0x1934)", got)
	}

	// Decode: vdsm's bytes read back as the request, and re-encode to themselves.
	if !want.Valid() {
		t.Fatal("reference request mailbox fails the checksum")
	}
	slot := want.Slot(0)
	if k := slot.Kind(); k != KindExtend {
		t.Fatalf("slot 0 kind = %v", k)
	}
	got, err := DecodeExtend(slot)
	if err != nil || got != refExtend {
		t.Fatalf("DecodeExtend = %+v, %v; want %+v", got, err, refExtend)
	}
	if again, _ := got.Encode(); again != slot {
		t.Error("decode then encode does not give vdsm's bytes back")
	}
	for i := 1; i < MessagesPerMbox; i++ {
		if s := want.Slot(i); s.Kind() != KindEmpty {
			t.Errorf("slot %d kind = %v, want empty", i, s.Kind())
		}
	}
	if size := string(slot[37:53]); size != "0000000000001400" {
		t.Errorf("size field = %q", size)
	}
}

func TestGoldenReply(t *testing.T) {
	want := refBlock(t, "host7-reply-mailbox.bin")
	requestBlock := refBlock(t, "host7-request-mailbox.bin")
	request := requestBlock.Slot(0)
	var out Mailbox // the SPM writes no checksum in the outbox
	out.SetSlot(0, replyFor(request, refExtend.SizeMiB))
	if out != want {
		t.Errorf("reply mailbox differs from vdsm's:\n got %x\nwant %x", out[:64], want[:64])
	}
	reply := want.Slot(0)
	if !replyTo(&reply, &request) {
		t.Error("vdsm's reply does not match its request")
	}
	if e, err := DecodeExtend(reply); err != nil || e != refExtend {
		t.Errorf("DecodeExtend(reply) = %+v, %v", e, err)
	}
	failure := replyFor(request, 0)
	if !replyTo(&failure, &request) || string(failure[37:53]) != strings.Repeat("0", 16) {
		t.Errorf("failure reply = %q", failure[:])
	}
}

func TestGoldenClean(t *testing.T) {
	want := refBlock(t, "host7-clean-mailbox.bin")
	var mb Mailbox
	mb.SetSlot(0, CleanMessage)
	mb.Seal()
	if mb != want {
		t.Errorf("CLEAN mailbox differs from vdsm's: got checksum %#x, want %#x", mb.StoredChecksum(), want.StoredChecksum())
	}
	if s := want.Slot(0); s.Kind() != KindClean || !want.Valid() || want.StoredChecksum() != 0x40 {
		t.Errorf("reference CLEAN: kind %v, valid %v, checksum %#x", s.Kind(), want.Valid(), want.StoredChecksum())
	}
}

func TestGoldenEvent(t *testing.T) {
	want := refBlock(t, "event-block.bin")
	id, ok := DecodeEvent(&want)
	if !ok {
		t.Fatal("reference events block not recognised")
	}
	if got := EncodeEvent(id); got != want {
		t.Error("encoded events block differs from vdsm's")
	}
	var zero Mailbox
	if _, ok := DecodeEvent(&zero); ok {
		t.Error("a zero block decoded as an event")
	}
}

func TestChecksum(t *testing.T) {
	var mb Mailbox
	if mb.Checksum() != 0 || !mb.Valid() {
		t.Error("all-zero mailbox: checksum must be 0 and valid")
	}
	for i := range mb {
		mb[i] = 0xff
	}
	if got, want := mb.Checksum(), uint32(4092*0xff); got != want {
		t.Errorf("all-0xff checksum = %d, want %d", got, want)
	}
	mb.Seal()
	if !mb.Valid() {
		t.Error("sealed mailbox not valid")
	}
	mb[100] ^= 1
	if mb.Valid() {
		t.Error("a flipped bit passed the checksum")
	}
}

func TestUUID(t *testing.T) {
	u, err := ParseUUID("8ADBC85E-E554-4AE0-B318-8A5465FE5FE1")
	if err != nil || u != refDomain || u.String() != "8adbc85e-e554-4ae0-b318-8a5465fe5fe1" {
		t.Errorf("ParseUUID(upper) = %v, %v", u, err)
	}
	var packed [16]byte
	packUUID(packed[:], refDomain)
	if packed[0] != 0xe1 || packed[15] != 0x8a || unpackUUID(packed[:]) != refDomain {
		t.Errorf("packed = %x", packed)
	}
	for _, bad := range []string{"", "8adbc85e-e554-4ae0-b318-8a5465fe5fe", "8adbc85e-e554-4ae0-b318-8a5465fe5fe1x",
		"8adbc85ee5544ae0b3188a5465fe5fe1", "8adbc85e-e554-4ae0-b318_8a5465fe5fe1", "8adbc85e-e554-4ae0-b318-8a5465fe5fzz"} {
		if _, err := ParseUUID(bad); err == nil {
			t.Errorf("ParseUUID(%q) accepted", bad)
		}
	}
}

func TestExtendSizes(t *testing.T) {
	for _, size := range []uint64{0, 1, 5120, MaxSizeMiB} {
		e := Extend{Domain: refDomain, Volume: refVolume, SizeMiB: size}
		m, err := e.Encode()
		if err != nil {
			t.Fatal(err)
		}
		if got, err := DecodeExtend(m); err != nil || got != e {
			t.Errorf("size %d: round trip %+v, %v", size, got, err)
		}
	}
	if _, err := (Extend{SizeMiB: MaxSizeMiB + 1}).Encode(); err == nil {
		t.Error("a size above the limit was encoded")
	}
	m, _ := refExtend.Encode()
	copy(m[37:53], "00000001000000000")
	if _, err := DecodeExtend(m); err == nil {
		t.Error("a size above the limit was decoded")
	}
	copy(m[37:53], "00000000000014g0")
	e, err := DecodeExtend(m)
	if err == nil || e.Domain != refDomain || e.Volume != refVolume {
		t.Errorf("malformed size: %+v, %v (want an error with the volume kept)", e, err)
	}
	if ValidHostID(0) == nil || ValidHostID(250) == nil || ValidHostID(1) != nil || ValidHostID(249) != nil {
		t.Error("ValidHostID must accept exactly 1..249")
	}
}

func TestKinds(t *testing.T) {
	var m Message
	if m.Kind() != KindEmpty {
		t.Error("zero message not empty")
	}
	m[0], m[1] = '1', 'x'
	if m.Kind() != KindUnknown {
		t.Error("garbage not unknown")
	}
	almost := CleanMessage
	almost[63] = 0
	if almost.Kind() == KindClean || CleanMessage.Kind() != KindClean {
		t.Error("CLEAN must be exactly 64 × 0x01")
	}
	if !bytes.Equal(CleanMessage[:], bytes.Repeat([]byte{1}, 64)) {
		t.Error("CleanMessage bytes")
	}
}
