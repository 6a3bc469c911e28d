package qcow2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// The headers in testdata: the first 4096 bytes of images made by qemu-img
// (testdata/mkheaders.sh).
var testdataHeaders = map[string]Header{
	"v2-100M":         {Version: 2, VirtualSize: 100 << 20, ClusterBits: 16},
	"v2-1G":           {Version: 2, VirtualSize: 1 << 30, ClusterBits: 16},
	"v3-1G":           {Version: 3, VirtualSize: 1 << 30, ClusterBits: 16},
	"v3-1e9":          {Version: 3, VirtualSize: 1e9, ClusterBits: 16},
	"v3-4T":           {Version: 3, VirtualSize: 4 << 40, ClusterBits: 16},
	"v3-2M-clusters":  {Version: 3, VirtualSize: 10 << 30, ClusterBits: 21},
	"v3-512-clusters": {Version: 3, VirtualSize: 1 << 30, ClusterBits: 9},
	"v3-backing":      {Version: 3, VirtualSize: 20 << 30, ClusterBits: 16, BackingFile: true},
	"v3-luks":         {Version: 3, VirtualSize: 1 << 30, ClusterBits: 16, Encrypted: true},
	"v3-extended-l2":  {Version: 3, VirtualSize: 8 << 30, ClusterBits: 16, IncompatibleFeatures: IncompatExtendedL2},
	"v3-zstd":         {Version: 3, VirtualSize: 8 << 30, ClusterBits: 16, IncompatibleFeatures: IncompatCompression},
}

func readHeader(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name+".hdr"))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestProbeTestdata(t *testing.T) {
	files, err := filepath.Glob("testdata/*.hdr")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) != len(testdataHeaders) {
		t.Errorf("testdata holds %d headers, the test knows %d", len(files), len(testdataHeaders))
	}
	for name, want := range testdataHeaders {
		t.Run(name, func(t *testing.T) {
			got, err := Probe(bytes.NewReader(readHeader(t, name)))
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("got %+v\nwant %+v", got, want)
			}
		})
	}
}

func TestProbeNotQcow2(t *testing.T) {
	for name, b := range map[string][]byte{
		"zeros":           make([]byte, 1<<20), // a raw volume, as lvcreate leaves it
		"empty":           nil,
		"magic cut short": []byte("QFI"),
		"qcow2 at 512":    append(make([]byte, 512), readHeader(t, "v3-1G")...),
		"text":            []byte("QFI\xfa\x00\x00\x00\x03"),
	} {
		if h, err := Probe(bytes.NewReader(b)); !errors.Is(err, ErrNotQcow2) {
			t.Errorf("%s: %+v, %v; want ErrNotQcow2", name, h, err)
		}
	}
}

// directReader serves a block device's bytes as O_DIRECT does: it refuses a read
// that is not whole aligned 512-byte blocks, and gives exactly what it was asked.
type directReader struct {
	data  []byte
	reads int
}

func (r *directReader) ReadAt(p []byte, off int64) (int, error) {
	r.reads++
	if len(p) == 0 || len(p)%512 != 0 || off%512 != 0 || uintptr(unsafe.Pointer(&p[0]))%512 != 0 {
		return 0, unix.EINVAL
	}
	if len(p) > ProbeSize {
		return 0, errors.New("read of more than 4 KiB")
	}
	return copy(p, r.data[off:]), nil
}

func TestProbeOneAlignedRead(t *testing.T) {
	r := &directReader{data: append(readHeader(t, "v3-1G"), make([]byte, 1<<20)...)}
	h, err := Probe(r)
	if err != nil {
		t.Fatal(err)
	}
	if h != testdataHeaders["v3-1G"] {
		t.Errorf("got %+v", h)
	}
	if r.reads != 1 {
		t.Errorf("%d reads, want 1", r.reads)
	}
}

// funcReader answers ReadAt with read.
type funcReader func(p []byte, off int64) (int, error)

func (f funcReader) ReadAt(p []byte, off int64) (int, error) { return f(p, off) }

func TestProbeShortReads(t *testing.T) {
	v3, v2 := readHeader(t, "v3-1G"), readHeader(t, "v2-1G")
	for name, tc := range map[string]struct {
		b    []byte
		want Header
	}{
		"v3 header only":     {v3[:112], testdataHeaders["v3-1G"]},
		"v2 header only":     {v2[:72], testdataHeaders["v2-1G"]},
		"v2 and its garbage": {append(v2[:72:72], bytes.Repeat([]byte{0xff}, 100)...), testdataHeaders["v2-1G"]},
	} {
		h, err := Probe(bytes.NewReader(tc.b))
		if err != nil || h != tc.want {
			t.Errorf("%s: %+v, %v; want %+v", name, h, err, tc.want)
		}
	}

	// A reader may return io.EOF with a full buffer.
	h, err := Probe(funcReader(func(p []byte, off int64) (int, error) { return copy(p, v3), io.EOF }))
	if err != nil || h != testdataHeaders["v3-1G"] {
		t.Errorf("full read with io.EOF: %+v, %v", h, err)
	}
}

func TestProbeReaderErrors(t *testing.T) {
	v3 := readHeader(t, "v3-1G")
	h, err := Probe(funcReader(func(p []byte, off int64) (int, error) { return copy(p, v3), unix.EIO }))
	if !errors.Is(err, unix.EIO) || errors.Is(err, ErrInvalid) || errors.Is(err, ErrNotQcow2) {
		t.Errorf("read error: %+v, %v; want EIO alone", h, err)
	}
	// A faulty reader's counts must not make Probe panic.
	for _, n := range []int{-1, ProbeSize + 1, math.MaxInt} {
		_, err := Probe(funcReader(func(p []byte, off int64) (int, error) { copy(p, v3); return n, nil }))
		t.Logf("reader returning n=%d: %v", n, err)
	}
}

// Mutations of a header, each breaking one rule.
func set32(off int, v uint32) func([]byte) {
	return func(b []byte) { binary.BigEndian.PutUint32(b[off:], v) }
}

func set64(off int, v uint64) func([]byte) {
	return func(b []byte) { binary.BigEndian.PutUint64(b[off:], v) }
}

func both(fs ...func([]byte)) func([]byte) {
	return func(b []byte) {
		for _, f := range fs {
			f(b)
		}
	}
}

func TestProbeInvalid(t *testing.T) {
	for _, tc := range []struct {
		name   string
		base   string // testdata header to start from
		mutate func([]byte)
		cut    int // keep only this many bytes when not 0
		want   string
	}{
		{"version 1 (qcow)", "v3-1G", set32(offVersion, 1), 0, "version 1 "},
		{"version 4", "v3-1G", set32(offVersion, 4), 0, "version 4 "},
		{"version cut", "v3-1G", nil, 6, "truncated to 6 bytes, the header needs 8"},
		{"v2 cut", "v2-1G", nil, 71, "truncated to 71 bytes, the header needs 72"},
		{"v3 cut", "v3-1G", nil, 103, "truncated to 103 bytes, the header needs 104"},
		{"v3 cut before compression_type", "v3-1G", nil, 104, "truncated to 104 bytes, the header needs 105"},
		{"cluster_bits 8", "v3-1G", set32(offClusterBits, 8), 0, "cluster_bits 8 outside 9..21"},
		{"cluster_bits 22", "v3-1G", set32(offClusterBits, 22), 0, "cluster_bits 22 outside 9..21"},
		{"cluster_bits huge", "v2-1G", set32(offClusterBits, math.MaxUint32), 0, "cluster_bits 4294967295"},
		{"v3 header_length 72", "v3-1G", set32(offHeaderLength, 72), 0, "header_length 72 "},
		{"v3 header_length 100", "v3-1G", set32(offHeaderLength, 100), 0, "header_length 100 "},
		{"v3 header_length 108", "v3-1G", set32(offHeaderLength, 108), 0, "header_length 108 "},
		{"header longer than a cluster", "v3-512-clusters", set32(offHeaderLength, 520), 0, "header_length 520 "},
		{"refcount_order 7", "v3-1G", set32(offRefcountOrder, 7), 0, "refcount_order 7"},
		{"virtual size 0", "v3-1G", set64(offSize, 0), 0, "virtual size 0 "},
		{"v2 virtual size 0", "v2-1G", set64(offSize, 0), 0, "virtual size 0 "},
		{"virtual size 2^63", "v3-1G", set64(offSize, 1<<63), 0, "virtual size 9223372036854775808 "},
		{"virtual size 2^64-1", "v3-1G", set64(offSize, math.MaxUint64), 0, "virtual size 18446744073709551615 "},
		{"virtual size past the L1 table", "v3-1G", set64(offSize, 1<<30+1), 0, "needs 3 L1 entries with 65536-byte clusters, the header has 2"},
		{"virtual size 2^63-1 with 512-byte clusters", "v3-512-clusters", set64(offSize, math.MaxInt64), 0, "needs 281474976710656 L1 entries"},
		{"L1 past QEMU's limit", "v3-1G", set32(offL1Size, 4<<20+1), 0, "L1 table of 4194305 entries"},
		{"virtual size past QEMU's L1 limit", "v3-2M-clusters", both(set64(offSize, 1<<61+1), set32(offL1Size, 4<<20+1)), 0, "L1 table of 4194305 entries"},
		{"unknown incompatible features", "v3-1G", set64(offIncompatible, 1<<5|1<<63|IncompatDirty), 0,
			"unknown incompatible feature bits 5, 63 (0x8000000000000021)"},
		{"extended L2 with 8 KiB clusters", "v3-extended-l2", both(set32(offClusterBits, 13), set32(offL1Size, 1<<20)), 0,
			"extended L2 entries need clusters of 16 KiB or more, not 8192 bytes"},
		{"extended L2 entries map half", "v3-1G", set64(offIncompatible, IncompatExtendedL2), 0, "needs 4 L1 entries"},
		{"compression bit, zlib type", "v3-1G", set64(offIncompatible, IncompatCompression), 0, "compression_type 0 does not match"},
		{"compression bit, no type field", "v3-zstd", set32(offHeaderLength, 104), 0, "compression_type 0 does not match"},
		{"compression type, no bit", "v3-zstd", set64(offIncompatible, 0), 0, "compression_type 1 does not match"},
		{"crypt_method 3", "v3-1G", set32(offCryptMethod, 3), 0, "crypt_method 3"},
		{"backing file name too long", "v3-backing", set32(offBackingFileSize, 1024), 0, "backing file name of 1024 bytes"},
		{"backing file name past the cluster", "v3-backing", set64(offBackingFileOffset, 65530), 0, "backing file name at 65530, 10 bytes"},
		{"backing file name far away", "v3-backing", set64(offBackingFileOffset, math.MaxUint64), 0, "backing file name at 18446744073709551615"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := readHeader(t, tc.base)
			if tc.mutate != nil {
				tc.mutate(b)
			}
			if tc.cut != 0 {
				b = b[:tc.cut]
			}
			h, err := Probe(bytes.NewReader(b))
			if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %+v, %v; want ErrInvalid saying %q", h, err, tc.want)
			}
			t.Log(err)
		})
	}
}

// What the format allows is accepted, and reported as it is.
func TestProbeAccepts(t *testing.T) {
	for _, tc := range []struct {
		name   string
		base   string
		mutate func([]byte)
		check  func(Header) bool
	}{
		{"dirty and corrupt", "v3-1G", set64(offIncompatible, IncompatDirty|IncompatCorrupt),
			func(h Header) bool { return h.IncompatibleFeatures == IncompatDirty|IncompatCorrupt }},
		{"external data file", "v3-1G", set64(offIncompatible, IncompatExternalData),
			func(h Header) bool { return h.IncompatibleFeatures == IncompatExternalData }},
		{"v2 ignores v3 fields", "v2-1G", both(set64(offIncompatible, math.MaxUint64), set32(offHeaderLength, 1)),
			func(h Header) bool { return h.IncompatibleFeatures == 0 }},
		{"type byte beyond a 104-byte header", "v3-1G", both(set32(offHeaderLength, 104), func(b []byte) { b[offCompressionType] = 1 }),
			func(h Header) bool { return h.IncompatibleFeatures == 0 }},
		{"largest size QEMU maps", "v3-2M-clusters", both(set64(offSize, 1<<61), set32(offL1Size, 1<<22)),
			func(h Header) bool { return h.VirtualSize == 1<<61 }},
		{"smallest size", "v3-1G", set64(offSize, 1),
			func(h Header) bool { return h.VirtualSize == 1 }},
		{"L1 larger than needed", "v3-1G", set32(offL1Size, 1000),
			func(h Header) bool { return h.VirtualSize == 1<<30 }},
		{"AES", "v3-1G", set32(offCryptMethod, 1),
			func(h Header) bool { return h.Encrypted }},
		{"backing file name ending the cluster", "v3-backing", both(set64(offBackingFileOffset, 65536-1023), set32(offBackingFileSize, 1023)),
			func(h Header) bool { return h.BackingFile }},
	} {
		b := readHeader(t, tc.base)
		tc.mutate(b)
		h, err := Probe(bytes.NewReader(b))
		if err != nil || !tc.check(h) {
			t.Errorf("%s: %+v, %v", tc.name, h, err)
		}
	}
}

func TestClusterSize(t *testing.T) {
	if got := testdataHeaders["v3-2M-clusters"].ClusterSize(); got != 2<<20 {
		t.Errorf("ClusterSize = %d, want 2 MiB", got)
	}
}

func FuzzProbe(f *testing.F) {
	files, err := filepath.Glob("testdata/*.hdr")
	if err != nil || len(files) == 0 {
		f.Fatal("no testdata headers", err)
	}
	for _, name := range files {
		b, err := os.ReadFile(name)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
		f.Add(b[:112]) // the fuzzer works better on short inputs
	}
	f.Add(make([]byte, 512))
	f.Fuzz(func(t *testing.T, b []byte) {
		h, err := Probe(bytes.NewReader(b))
		if err != nil {
			if !errors.Is(err, ErrNotQcow2) && !errors.Is(err, ErrInvalid) {
				t.Fatalf("error of neither kind: %v", err)
			}
			if errors.Is(err, ErrNotQcow2) != !bytes.HasPrefix(b, []byte(magic)) {
				t.Fatalf("%v with magic %q", err, b[:min(len(b), 4)])
			}
			return
		}
		switch {
		case h.Version != 2 && h.Version != 3,
			h.ClusterBits < MinClusterBits || h.ClusterBits > MaxClusterBits,
			h.VirtualSize == 0 || h.VirtualSize > MaxVirtualSize,
			h.IncompatibleFeatures&^KnownIncompatible != 0,
			h.Version == 2 && h.IncompatibleFeatures != 0:
			t.Fatalf("accepted %+v", h)
		}
		// The result does not depend on bytes past the read.
		if len(b) > ProbeSize {
			if again, err := Probe(bytes.NewReader(b[:ProbeSize])); err != nil || again != h {
				t.Fatalf("%+v, then %+v, %v from the first %d bytes", h, again, err, ProbeSize)
			}
		}
	})
}

func TestProbePathFile(t *testing.T) {
	for name, want := range testdataHeaders {
		got, err := ProbePath(filepath.Join("testdata", name+".hdr"))
		if err != nil || got != want {
			t.Errorf("%s: %+v, %v; want %+v", name, got, err, want)
		}
	}

	dir := t.TempDir()
	raw := filepath.Join(dir, "raw")
	if err := os.WriteFile(raw, make([]byte, 8192), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ProbePath(raw); !errors.Is(err, ErrNotQcow2) || !strings.Contains(err.Error(), raw) {
		t.Errorf("raw file: %v; want ErrNotQcow2 naming %s", err, raw)
	}
	missing := filepath.Join(dir, "missing")
	if _, err := ProbePath(missing); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing file: %v; want fs.ErrNotExist naming %s", err, missing)
	}
	if _, err := ProbePath(dir); err == nil || !strings.Contains(err.Error(), "not a file or block device") {
		t.Errorf("directory: %v", err)
	}
	// A FIFO with no writer must fail at once, not block the open.
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := ProbePath(fifo); err == nil || !strings.Contains(err.Error(), "not a file or block device") {
		t.Errorf("FIFO: %v", err)
	}
	if _, err := ProbePath("/dev/zero"); err == nil || !strings.Contains(err.Error(), "not a file or block device") {
		t.Errorf("character device: %v", err)
	}
}
