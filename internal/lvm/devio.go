package lvm

import (
	"errors"
	"fmt"
	"io"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// source is something metadata is read from: a block device or image file on
// this host, or bytes in memory for tests and fuzzing.
type source interface {
	// readAt returns n bytes from byte offset off, or an error; never fewer.
	readAt(off, n uint64) ([]byte, error)
	size() uint64
}

// ioAlign is the alignment of O_DIRECT offsets, lengths and buffers: a page,
// which is a multiple of every logical block size in use (512 and 4096).
const ioAlign = 4096

// directFile reads a block device (or an image file) with O_DIRECT, so that
// what another host wrote is read from the storage, not from this host's page
// cache.
type directFile struct {
	f      *os.File
	path   string
	sz     uint64
	direct bool
	rdev   uint64
	isBlk  bool
}

// openDirect opens path read-only with O_DIRECT. Files on filesystems without
// O_DIRECT (tmpfs) are opened buffered; block devices must take O_DIRECT.
func openDirect(path string) (*directFile, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_DIRECT|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
	direct := true
	if errors.Is(err, unix.EINVAL) {
		fd, err = unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC|unix.O_NOCTTY, 0)
		direct = false
	}
	if err != nil {
		return nil, &os.PathError{Op: "open", Path: path, Err: err}
	}
	f := os.NewFile(uintptr(fd), path)
	d := &directFile{f: f, path: path, direct: direct}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close()
		return nil, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFBLK:
		d.isBlk = true
		d.rdev = st.Rdev
		sz, err := unix.IoctlGetUint64(fd, unix.BLKGETSIZE64)
		if err != nil {
			f.Close()
			return nil, &os.PathError{Op: "BLKGETSIZE64", Path: path, Err: err}
		}
		d.sz = sz
		if !direct {
			f.Close()
			return nil, fmt.Errorf("open %s: block device refuses O_DIRECT", path)
		}
	case unix.S_IFREG:
		d.sz = uint64(st.Size)
	default:
		f.Close()
		return nil, fmt.Errorf("%s: not a block device or a regular file", path)
	}
	return d, nil
}

func (d *directFile) close() error { return d.f.Close() }

func (d *directFile) size() uint64 { return d.sz }

// readAt reads [off, off+n) with aligned O_DIRECT reads and returns a slice of
// the aligned buffer.
func (d *directFile) readAt(off, n uint64) ([]byte, error) {
	end, ok := add64(off, n)
	if !ok || end > d.sz {
		return nil, fmt.Errorf("read %s: bytes %d+%d beyond the device end (%d)", d.path, off, n, d.sz)
	}
	if n == 0 {
		return []byte{}, nil
	}
	if n > MaxMetadataSize+2*ioAlign {
		return nil, fmt.Errorf("read %s: %d bytes at once is over the limit", d.path, n)
	}
	aStart := off &^ (ioAlign - 1)
	aEnd := (end + ioAlign - 1) &^ (ioAlign - 1)
	buf := alignedBuf(int(aEnd - aStart))
	// Near the end of a device whose size is not a multiple of ioAlign the
	// read comes back short; only [off, end) must arrive.
	need := int(end - aStart)
	got := 0
	for got < need {
		m, err := unix.Pread(int(d.f.Fd()), buf[got:], int64(aStart)+int64(got))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, &os.PathError{Op: "read", Path: d.path, Err: fmt.Errorf("at %d: %w", aStart+uint64(got), err)}
		}
		if m == 0 {
			return nil, &os.PathError{Op: "read", Path: d.path, Err: fmt.Errorf("at %d: %w", aStart+uint64(got), io.ErrUnexpectedEOF)}
		}
		got += m
		if d.direct && got < need && got%512 != 0 {
			return nil, &os.PathError{Op: "read", Path: d.path, Err: fmt.Errorf("short unaligned read at %d", aStart)}
		}
	}
	return buf[off-aStart : end-aStart : end-aStart], nil
}

// alignedBuf returns n bytes starting on an ioAlign boundary. The Go heap does
// not move objects, so the alignment holds for the buffer's life.
func alignedBuf(n int) []byte {
	b := make([]byte, n+ioAlign)
	skip := 0
	if r := int(uintptr(unsafe.Pointer(&b[0])) & (ioAlign - 1)); r != 0 {
		skip = ioAlign - r
	}
	return b[skip : skip+n : skip+n]
}

// memSource is metadata in memory: a device image for tests and fuzzing.
type memSource []byte

func (m memSource) size() uint64 { return uint64(len(m)) }

func (m memSource) readAt(off, n uint64) ([]byte, error) {
	end, ok := add64(off, n)
	if !ok || end > uint64(len(m)) {
		return nil, fmt.Errorf("read: bytes %d+%d beyond the end (%d)", off, n, len(m))
	}
	return m[off:end:end], nil
}
