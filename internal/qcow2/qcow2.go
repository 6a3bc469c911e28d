// Package qcow2 reads the header of a qcow2 image written directly on a block device
// (or a file), strictly: the agent watches a logical volume only when it starts with a
// qcow2 header, and sizes the volume from the image's virtual size, so a header it
// cannot trust must be refused rather than guessed at. The layout is QEMU's
// docs/interop/qcow2.txt; only the fixed header is read (no header extensions).
package qcow2

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"math/bits"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ProbeSize is the one read Probe makes, at offset 0. The fields it parses end at byte
// 105, but 4 KiB is a whole logical block on 512-byte and 4 KiB-sector disks alike,
// so the read also works through O_DIRECT on either.
const ProbeSize = 4096

// MaxVirtualSize is the largest virtual size Probe accepts: sizes are int64 offsets
// for the kernel, LVM and QEMU.
const MaxVirtualSize = math.MaxInt64

// Cluster sizes: the format's minimum, and QEMU's limit (it opens no image with
// larger clusters).
const (
	MinClusterBits = 9  // 512 B
	MaxClusterBits = 21 // 2 MiB
)

// Incompatible feature bits of a version 3 header (an implementation must refuse an
// image with bits it does not know). A caller may care about some: with an external
// data file the guest's data is not on this volume, and a corrupt image must not be
// written to.
const (
	IncompatDirty        = 1 << 0 // refcounts may be stale (lazy refcounts, not closed cleanly)
	IncompatCorrupt      = 1 << 1 // QEMU found metadata corruption
	IncompatExternalData = 1 << 2 // guest clusters live in another file
	IncompatCompression  = 1 << 3 // compressed clusters use compression_type, not zlib
	IncompatExtendedL2   = 1 << 4 // L2 entries of 16 bytes, with subclusters

	KnownIncompatible = IncompatDirty | IncompatCorrupt | IncompatExternalData |
		IncompatCompression | IncompatExtendedL2
)

var (
	// ErrNotQcow2: the volume does not start with the qcow2 magic (a raw volume).
	ErrNotQcow2 = errors.New("not a qcow2 image")
	// ErrInvalid: the volume starts with the qcow2 magic, but its header breaks the
	// format's rules or goes beyond what QEMU opens, so nothing in it can be relied on.
	ErrInvalid = errors.New("invalid qcow2 header")
)

// Header is what a caller needs of an image's header.
type Header struct {
	Version     uint32 // 2 (compat=0.10) or 3 (compat=1.1)
	VirtualSize uint64 // the disk size the guest sees, in bytes: 1..MaxVirtualSize
	ClusterBits uint32 // MinClusterBits..MaxClusterBits; the cluster size is 1<<ClusterBits
	BackingFile bool   // the image names a backing file, and holds only what differs from it
	Encrypted   bool   // AES or LUKS: the data is ciphertext
	// IncompatibleFeatures are the version 3 header's bits (Incompat*), only known
	// ones; 0 for version 2, which has none.
	IncompatibleFeatures uint64
}

// ClusterSize is the image's allocation unit, in bytes.
func (h Header) ClusterSize() uint64 { return 1 << h.ClusterBits }

// Byte offsets of the header fields Probe reads (big-endian).
const (
	offMagic             = 0
	offVersion           = 4
	offBackingFileOffset = 8
	offBackingFileSize   = 16
	offClusterBits       = 20
	offSize              = 24
	offCryptMethod       = 32
	offL1Size            = 36
	offIncompatible      = 72
	offRefcountOrder     = 96
	offHeaderLength      = 100
	offCompressionType   = 104

	v2HeaderLength    = 72  // version 2's header is exactly this long
	v3MinHeaderLength = 104 // version 3's fixed fields end here

	magic              = "QFI\xfb"
	maxBackingFileName = 1023
	maxCryptMethod     = 2       // 1 AES, 2 LUKS
	maxRefcountOrder   = 6       // 64-bit refcounts
	maxL1Entries       = 4 << 20 // QEMU's limit: an L1 table of 32 MiB
)

// Probe reads the header at the start of r with one read of ProbeSize bytes into a
// 4096-aligned buffer, so r may be a file opened with O_DIRECT, and checks it. A short
// read (a reader returning io.EOF) is fine as long as it holds the header. It returns
// an error wrapping ErrNotQcow2 when r does not start with the qcow2 magic, one
// wrapping ErrInvalid when the header is not one to rely on, or r's error.
func Probe(r io.ReaderAt) (Header, error) {
	buf := alignedBuffer(ProbeSize)
	n, err := r.ReadAt(buf, 0)
	n = max(0, min(n, len(buf))) // a faulty reader must not make the slicing panic
	if err != nil && !errors.Is(err, io.EOF) {
		return Header{}, fmt.Errorf("read qcow2 header: %w", err)
	}
	return parse(buf[:n])
}

// parse checks the header at the start of b; b may end anywhere.
func parse(b []byte) (Header, error) {
	if len(b) < len(magic) || string(b[:len(magic)]) != magic {
		return Header{}, ErrNotQcow2
	}
	if len(b) < offVersion+4 {
		return Header{}, truncated(len(b), offVersion+4)
	}
	h := Header{Version: be32(b, offVersion)}
	need := 0
	switch h.Version {
	case 2:
		need = v2HeaderLength
	case 3:
		need = v3MinHeaderLength
	default:
		// Version 1 is the older qcow format, with the same magic.
		return Header{}, fmt.Errorf("%w: version %d (only 2 and 3 exist)", ErrInvalid, h.Version)
	}
	if len(b) < need {
		return Header{}, truncated(len(b), need)
	}

	h.ClusterBits = be32(b, offClusterBits)
	if h.ClusterBits < MinClusterBits || h.ClusterBits > MaxClusterBits {
		return Header{}, fmt.Errorf("%w: cluster_bits %d outside %d..%d", ErrInvalid, h.ClusterBits, MinClusterBits, MaxClusterBits)
	}
	clusterSize := h.ClusterSize()

	if h.Version == 3 {
		if err := checkV3(b, &h, clusterSize); err != nil {
			return Header{}, err
		}
	}

	h.VirtualSize = be64(b, offSize)
	if err := checkSize(b, h); err != nil {
		return Header{}, err
	}

	switch crypt := be32(b, offCryptMethod); {
	case crypt > maxCryptMethod:
		return Header{}, fmt.Errorf("%w: crypt_method %d (0 none, 1 AES, 2 LUKS)", ErrInvalid, crypt)
	case crypt != 0:
		h.Encrypted = true
	}

	// The backing file's name lies in the first cluster, after the header extensions.
	if off := be64(b, offBackingFileOffset); off != 0 {
		size := uint64(be32(b, offBackingFileSize))
		if size > maxBackingFileName {
			return Header{}, fmt.Errorf("%w: backing file name of %d bytes (at most %d)", ErrInvalid, size, maxBackingFileName)
		}
		if off > clusterSize || size > clusterSize-off {
			return Header{}, fmt.Errorf("%w: backing file name at %d, %d bytes, beyond the first cluster (%d bytes)", ErrInvalid, off, size, clusterSize)
		}
		h.BackingFile = true
	}
	return h, nil
}

// checkV3 checks the fields version 3 adds and sets h.IncompatibleFeatures.
func checkV3(b []byte, h *Header, clusterSize uint64) error {
	length := be32(b, offHeaderLength)
	if length < v3MinHeaderLength || length%8 != 0 || uint64(length) > clusterSize {
		return fmt.Errorf("%w: header_length %d (a multiple of 8 from %d to the cluster size, %d)", ErrInvalid, length, v3MinHeaderLength, clusterSize)
	}
	if order := be32(b, offRefcountOrder); order > maxRefcountOrder {
		return fmt.Errorf("%w: refcount_order %d (at most %d)", ErrInvalid, order, maxRefcountOrder)
	}

	features := be64(b, offIncompatible)
	if unknown := features &^ KnownIncompatible; unknown != 0 {
		return fmt.Errorf("%w: unknown incompatible feature bits %s (0x%x)", ErrInvalid, bitList(unknown), features)
	}
	if features&IncompatExtendedL2 != 0 && h.ClusterBits < 14 {
		return fmt.Errorf("%w: extended L2 entries need clusters of 16 KiB or more, not %d bytes", ErrInvalid, clusterSize)
	}

	// compression_type (one byte at 104) is present when the header is longer than
	// 104 bytes; a non-zlib (non-zero) type and the feature bit go together.
	compression := byte(0)
	if length > offCompressionType {
		if len(b) <= offCompressionType {
			return truncated(len(b), offCompressionType+1)
		}
		compression = b[offCompressionType]
	}
	if (features&IncompatCompression != 0) != (compression != 0) {
		return fmt.Errorf("%w: compression_type %d does not match the compression type feature bit", ErrInvalid, compression)
	}
	h.IncompatibleFeatures = features
	return nil
}

// checkSize refuses a virtual size that is 0, beyond MaxVirtualSize, or more than the
// image's L1 table maps: a size the agent could not size a volume by, or one the image
// could not hold.
func checkSize(b []byte, h Header) error {
	if h.VirtualSize == 0 || h.VirtualSize > MaxVirtualSize {
		return fmt.Errorf("%w: virtual size %d (want 1 to %d)", ErrInvalid, h.VirtualSize, uint64(MaxVirtualSize))
	}
	// One L2 table fills a cluster with 8-byte entries (16 with extended L2), each
	// mapping a cluster; one L1 entry points to one L2 table.
	entryBits := uint32(3)
	if h.IncompatibleFeatures&IncompatExtendedL2 != 0 {
		entryBits = 4
	}
	perL1Bits := 2*h.ClusterBits - entryBits // at most 39: no overflow below
	needed := h.VirtualSize >> perL1Bits
	if h.VirtualSize&(1<<perL1Bits-1) != 0 {
		needed++
	}
	l1 := be32(b, offL1Size)
	if needed > uint64(l1) {
		return fmt.Errorf("%w: virtual size %d needs %d L1 entries with %d-byte clusters, the header has %d", ErrInvalid, h.VirtualSize, needed, h.ClusterSize(), l1)
	}
	if l1 > maxL1Entries {
		return fmt.Errorf("%w: L1 table of %d entries (QEMU opens at most %d)", ErrInvalid, l1, maxL1Entries)
	}
	return nil
}

func truncated(have, need int) error {
	return fmt.Errorf("%w: truncated to %d bytes, the header needs %d", ErrInvalid, have, need)
}

func be32(b []byte, off int) uint32 { return binary.BigEndian.Uint32(b[off:]) }
func be64(b []byte, off int) uint64 { return binary.BigEndian.Uint64(b[off:]) }

// bitList names the set bits of v: "5, 9".
func bitList(v uint64) string {
	var s []string
	for v != 0 {
		bit := bits.TrailingZeros64(v)
		s = append(s, strconv.Itoa(bit))
		v &^= 1 << bit
	}
	return strings.Join(s, ", ")
}

// alignedBuffer returns n bytes starting on a 4096-byte boundary, as O_DIRECT wants.
// Go's heap does not move objects, so the alignment holds for the buffer's life.
func alignedBuffer(n int) []byte {
	const align = 4096
	b := make([]byte, n+align)
	skip := (align - int(uintptr(unsafe.Pointer(&b[0]))%align)) % align
	return b[skip : skip+n : skip+n]
}

// ProbePath probes the file or block device at path, opened read-only. A block device
// is read with O_DIRECT: a volume on shared storage may have been written by another
// host (the image created there), and this host's page cache may still hold what the
// volume held before. Errors name the path.
func ProbePath(path string) (Header, error) {
	// O_NONBLOCK, so that a FIFO at path fails below instead of blocking the open.
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return Header{}, fmt.Errorf("open %s: %w", path, err)
	}
	defer unix.Close(fd)

	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return Header{}, fmt.Errorf("stat %s: %w", path, err)
	}
	flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return Header{}, fmt.Errorf("flags of %s: %w", path, err)
	}
	flags &^= unix.O_NONBLOCK
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		// A plain read: files may sit on tmpfs, which refuses O_DIRECT.
	case unix.S_IFBLK:
		// Set on this descriptor rather than by opening again: the path could name
		// another device by then.
		flags |= unix.O_DIRECT
	default:
		return Header{}, fmt.Errorf("%s: not a file or block device", path)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, flags); err != nil {
		return Header{}, fmt.Errorf("set the flags of %s (O_DIRECT on a block device): %w", path, err)
	}

	h, err := Probe(fdReader(fd))
	if err != nil {
		return Header{}, fmt.Errorf("%s: %w", path, err)
	}
	return h, nil
}

// fdReader reads a descriptor with pread(2), one call per ReadAt.
type fdReader int

func (fd fdReader) ReadAt(p []byte, off int64) (int, error) {
	for {
		n, err := unix.Pread(int(fd), p, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return 0, err
		}
		if n < len(p) {
			return n, io.EOF // the end of the file or device
		}
		return n, nil
	}
}
