package dm

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// guestReply reads a reply captured from a real kernel (ioctl 4.47, in the
// vmtest guest) from the fuzz seed corpus.
func guestReply(t *testing.T, fuzzer, name string) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "fuzz", fuzzer, name))
	if err != nil {
		t.Fatal(err)
	}
	_, val, _ := strings.Cut(strings.TrimSpace(string(raw)), "\n")
	s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(val, "[]byte("), ")"))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return []byte(s)
}

func TestDecodeGuestList(t *testing.T) {
	reply := guestReply(t, "FuzzNameListReply", "guest-list")
	h, err := decodeHeader(reply)
	if err != nil {
		t.Fatal(err)
	}
	devs, err := decodeNameList(reply, h)
	if err != nil {
		t.Fatal(err)
	}
	want := []Device{
		{Name: "nouuid", Major: 253, Minor: 2},
		{Name: "vg0-lv--with--dashes", UUID: "LVM-Abcdefghijklmnopqrstuvwxyz012341Abcdefghijklmnopqrstuvwxyz012341", Major: 253, Minor: 1},
		{Name: "vg0-lv0", UUID: "LVM-Abcdefghijklmnopqrstuvwxyz012340Abcdefghijklmnopqrstuvwxyz012340", Major: 253, Minor: 0},
	}
	if !slices.Equal(devs, want) {
		t.Errorf("decoded %+v\nwant %+v", devs, want)
	}

	for _, empty := range []string{"guest-list-empty", "guest-info"} {
		reply := guestReply(t, "FuzzNameListReply", empty)
		h, err := decodeHeader(reply)
		if err != nil {
			t.Fatal(err)
		}
		if devs, err := decodeNameList(reply, h); err != nil || len(devs) != 0 {
			t.Errorf("%s: %+v, %v; want no devices", empty, devs, err)
		}
	}
}

func TestDecodeGuestTable(t *testing.T) {
	reply := guestReply(t, "FuzzTargetsReply", "guest-table")
	h, err := decodeHeader(reply)
	if err != nil {
		t.Fatal(err)
	}
	if h.name != "vg0-lv0" || unix.Major(h.dev) != 253 || h.targetCount != 4 {
		t.Errorf("header %+v", h)
	}
	table, err := decodeTargets(reply, h)
	if err != nil {
		t.Fatal(err)
	}
	want := []Target{
		{0, 8192, "linear", "7:0 2048"},
		{8192, 4096, "striped", "2 128 7:0 20480 7:0 40960"},
		{12288, 2048, "error", ""},
		{14336, 2048, "error", ""},
	}
	if !slices.Equal(table, want) {
		t.Errorf("decoded %+v\nwant %+v", table, want)
	}
	if TableSectors(table) != 16384 {
		t.Errorf("TableSectors = %d, want 16384", TableSectors(table))
	}

	reply = guestReply(t, "FuzzTargetsReply", "guest-table-empty")
	if h, err = decodeHeader(reply); err != nil {
		t.Fatal(err)
	}
	if table, err := decodeTargets(reply, h); err != nil || len(table) != 0 {
		t.Errorf("table of a device without one: %+v, %v", table, err)
	}
}

// statusReply builds a DM_TABLE_STATUS reply the way the kernel lays it out.
func statusReply(table []Target) []byte {
	payload, _ := encodeTargets(table)
	// A load request's next is relative to each record; a reply's is from the payload start.
	for at := 0; at < len(payload); {
		next := int(native.Uint32(payload[at+int(offSpecNext):]))
		native.PutUint32(payload[at+int(offSpecNext):], uint32(at+next))
		at += next
	}
	buf := make([]byte, headerSize+len(payload))
	encodeHeader(buf, header{version: [3]uint32{4, 47, 0}, dataSize: uint32(len(buf)), dataStart: headerSize,
		targetCount: uint32(len(table)), name: "vg-lv"})
	copy(buf[headerSize:], payload)
	return buf
}

func TestTargetsRoundTrip(t *testing.T) {
	table := []Target{
		{0, 8, "linear", "7:0 0"},
		{8, 16, "striped", "2 128 7:0 2048 7:1 2048"},
		{24, 8, "error", ""},
	}
	payload, err := encodeTargets(table)
	if err != nil {
		t.Fatal(err)
	}
	if len(payload)%replyAlign != 0 {
		t.Errorf("payload of %d bytes is not 8-byte aligned", len(payload))
	}
	reply := statusReply(table)
	h, err := decodeHeader(reply)
	if err != nil {
		t.Fatal(err)
	}
	got, err := decodeTargets(reply, h)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, table) {
		t.Errorf("round trip %+v\nwant %+v", got, table)
	}
}

func TestEncodeTargetsRejects(t *testing.T) {
	for _, tt := range []Target{
		{Type: ""},
		{Type: "a-very-long-type-name"},
		{Type: "linear", Params: "7:0\x000"},
	} {
		if _, err := encodeTargets([]Target{tt}); err == nil {
			t.Errorf("encoded %+v", tt)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	good := statusReply([]Target{{0, 8, "linear", "7:0 0"}, {8, 8, "linear", "7:0 8"}})
	list := guestReply(t, "FuzzNameListReply", "guest-list")
	listHeader, _ := decodeHeader(list)
	firstNext := int(native.Uint32(list[int(listHeader.dataStart)+int(offNameListNext):]))
	mutate := func(src []byte, f func(b []byte)) []byte {
		b := slices.Clone(src)
		f(b)
		return b
	}
	for _, tc := range []struct {
		name  string
		reply []byte
		list  bool
	}{
		{"short header", good[:100], false},
		{"other major version", mutate(good, func(b []byte) { native.PutUint32(b[offVersion:], 5) }), false},
		{"data size past the buffer", mutate(good, func(b []byte) { native.PutUint32(b[offDataSize:], uint32(len(b)+1)) }), false},
		{"data start inside the header", mutate(good, func(b []byte) { native.PutUint32(b[offDataStart:], 100) }), false},
		{"name without NUL", mutate(good, func(b []byte) { copy(b[offName:offUUID], strings.Repeat("x", 128)) }), false},
		{"more targets than the payload", mutate(good, func(b []byte) { native.PutUint32(b[offTargetCount:], 3) }), false},
		{"next pointing back", mutate(good, func(b []byte) { native.PutUint32(b[headerSize+int(offSpecNext):], 0) }), false},
		{"params without NUL", mutate(good, func(b []byte) { native.PutUint32(b[offDataSize:], uint32(len(b)-8)) }), false},
		{"type without NUL", mutate(good, func(b []byte) { copy(b[headerSize+int(offSpecType):], strings.Repeat("t", 16)) }), false},
		{"list entry next past the end", mutate(list, func(b []byte) {
			native.PutUint32(b[int(listHeader.dataStart)+int(offNameListNext):], uint32(len(b)))
		}), true},
		{"list entry next inside itself", mutate(list, func(b []byte) {
			native.PutUint32(b[int(listHeader.dataStart)+int(offNameListNext):], 4)
		}), true},
		{"list name without NUL", mutate(list, func(b []byte) {
			at := int(listHeader.dataStart) + int(offNameListName)
			copy(b[at:int(listHeader.dataStart)+firstNext], strings.Repeat("n", firstNext))
		}), true},
		{"list truncated in an entry", mutate(list, func(b []byte) { native.PutUint32(b[offDataSize:], listHeader.dataSize-20) }), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, err := decodeHeader(tc.reply)
			if err == nil {
				if tc.list {
					_, err = decodeNameList(tc.reply, h)
				} else {
					_, err = decodeTargets(tc.reply, h)
				}
			}
			if !errors.Is(err, ErrBadReply) {
				t.Errorf("decoded without ErrBadReply: %v", err)
			}
		})
	}
}

func TestErrorMatching(t *testing.T) {
	var err error = &Error{Op: "info", Device: `name "x"`, Errno: unix.ENXIO}
	if !errors.Is(err, ErrNoDevice) || !errors.Is(err, unix.ENXIO) || errors.Is(err, ErrBusy) {
		t.Errorf("%v: wrong matches", err)
	}
	err = &Error{Op: "remove", Errno: unix.EBUSY}
	if !errors.Is(err, ErrBusy) || errors.Is(err, ErrNoDevice) {
		t.Errorf("%v: wrong matches", err)
	}
}

// The fuzzers feed arbitrary replies to the decoders: they must return either
// values or ErrBadReply, and never panic or read outside the buffer.

func FuzzNameListReply(f *testing.F) {
	f.Fuzz(func(t *testing.T, reply []byte) {
		h, err := decodeHeader(reply)
		if err != nil {
			return
		}
		devs, err := decodeNameList(reply, h)
		if err != nil && !errors.Is(err, ErrBadReply) {
			t.Fatalf("error without ErrBadReply: %v", err)
		}
		for _, d := range devs {
			if strings.IndexByte(d.Name, 0) >= 0 || strings.IndexByte(d.UUID, 0) >= 0 {
				t.Fatalf("NUL in a decoded name: %+v", d)
			}
		}
	})
}

func FuzzTargetsReply(f *testing.F) {
	f.Fuzz(func(t *testing.T, reply []byte) {
		h, err := decodeHeader(reply)
		if err != nil {
			return
		}
		table, err := decodeTargets(reply, h)
		if err != nil {
			if !errors.Is(err, ErrBadReply) {
				t.Fatalf("error without ErrBadReply: %v", err)
			}
			return
		}
		if len(table) != int(h.targetCount) {
			t.Fatalf("decoded %d targets of %d", len(table), h.targetCount)
		}
		for _, tg := range table {
			if len(tg.Type) >= unix.DM_MAX_TYPE_NAME || strings.IndexByte(tg.Params, 0) >= 0 {
				t.Fatalf("bad decoded target %+v", tg)
			}
		}
	})
}
