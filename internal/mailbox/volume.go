package mailbox

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"
	"unsafe"

	"github.com/lvwatch/lvwatch/internal/backoff"
	"github.com/lvwatch/lvwatch/internal/signature"
	"golang.org/x/sys/unix"
)

// Volume is an inbox or outbox: a file or block device read and written with O_DIRECT
// in whole 4 KiB blocks, so that another host's writes are never hidden by the page cache.
type Volume struct {
	path string
	fd   int
}

// Errors wrapped by OpenVolume's.
var (
	// ErrDirectIO: the file system refuses O_DIRECT.
	ErrDirectIO = errors.New("O_DIRECT refused")
	// ErrSignature: the volume carries a known signature (an LVM2 label, a partition
	// table, a file system), so it is not a mailbox volume and writing would destroy it.
	ErrSignature = errors.New("carries a known signature")
)

// VolumeOptions say how OpenVolume opens a volume for writing.
type VolumeOptions struct {
	Create bool // a missing file is created, sized for the 250 mailboxes
	// IgnoreSignatures opens a volume whose first sectors carry a known signature
	// (signature.Probe), which OpenVolume otherwise refuses: a mailbox volume holds only
	// zeros and the events block there, and a mistyped path must not destroy a PV.
	IgnoreSignatures bool
}

// OpenVolume opens path for O_DIRECT reads and writes and checks that it holds the
// 250 mailboxes (1,024,000 bytes) and no known signature.
func OpenVolume(path string, opts VolumeOptions) (*Volume, error) {
	flags := unix.O_RDWR
	if opts.Create {
		flags |= unix.O_CREAT
	}
	v, err := openVolume(path, flags)
	if err != nil {
		return nil, err
	}
	if !opts.IgnoreSignatures {
		if err := v.refuseSignatures(); err != nil {
			v.Close()
			return nil, err
		}
	}
	return v, nil
}

// OpenVolumeReadOnly opens path for O_DIRECT reads only, for looking at the
// mailboxes without the right to change them.
func OpenVolumeReadOnly(path string) (*Volume, error) {
	return openVolume(path, unix.O_RDONLY)
}

func openVolume(path string, flags int) (*Volume, error) {
	create := flags&unix.O_CREAT != 0
	fd, err := openRetry(path, flags|unix.O_DIRECT|unix.O_CLOEXEC)
	if errors.Is(err, unix.EINVAL) {
		return nil, fmt.Errorf("open %s: %w (a tmpfs or similar file system): put the mailbox on a block device or a disk-backed file system", path, ErrDirectIO)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	v := &Volume{path: path, fd: fd}
	if err := v.checkSize(create); err != nil {
		v.Close()
		return nil, err
	}
	// Some file systems accept O_DIRECT at open and refuse it at the first read.
	buf := AlignedBuffer(BlockSize)
	if err := v.ReadAt(buf, 0); err != nil {
		v.Close()
		if errors.Is(err, unix.EINVAL) {
			return nil, fmt.Errorf("read %s: %w: put the mailbox on a block device or a disk-backed file system", path, ErrDirectIO)
		}
		return nil, err
	}
	return v, nil
}

// refuseSignatures fails when the volume's first sectors carry a known signature.
func (v *Volume) refuseSignatures() error {
	buf := AlignedBuffer(signature.ProbeSize)
	if err := v.ReadAt(buf, 0); err != nil {
		return err
	}
	if found := signature.Probe(buf); len(found) > 0 {
		return fmt.Errorf("%s %w: %s; it is not a mailbox volume and writing the mailboxes would destroy it", v.path, ErrSignature, strings.Join(found, ", "))
	}
	return nil
}

func openRetry(path string, flags int) (int, error) {
	for {
		fd, err := unix.Open(path, flags, 0o600)
		if err != unix.EINTR {
			return fd, err
		}
	}
}

func (v *Volume) checkSize(grow bool) error {
	var st unix.Stat_t
	if err := unix.Fstat(v.fd, &st); err != nil {
		return fmt.Errorf("stat %s: %w", v.path, err)
	}
	var size int64
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFBLK:
		n, err := unix.IoctlGetUint64(v.fd, unix.BLKGETSIZE64)
		if err != nil {
			return fmt.Errorf("size of %s: %w", v.path, err)
		}
		size = int64(n)
	case unix.S_IFREG:
		size = st.Size
		if size < UsedSize && grow {
			if err := unix.Ftruncate(v.fd, UsedSize); err != nil {
				return fmt.Errorf("size %s: %w", v.path, err)
			}
			size = UsedSize
		}
	default:
		return fmt.Errorf("%s is neither a regular file nor a block device", v.path)
	}
	if size < UsedSize {
		return fmt.Errorf("%s holds %d bytes, less than the %d the mailboxes use", v.path, size, UsedSize)
	}
	return nil
}

// Path returns the path the volume was opened with.
func (v *Volume) Path() string { return v.path }

// ReadAt fills buf from byte offset off. buf must come from AlignedBuffer, and its
// length and off must be multiples of BlockSize.
func (v *Volume) ReadAt(buf []byte, off int64) error {
	return v.transfer(buf, off, "read", io.ErrUnexpectedEOF, unix.Pread)
}

// WriteAt writes buf at byte offset off, with ReadAt's alignment rules.
func (v *Volume) WriteAt(buf []byte, off int64) error {
	return v.transfer(buf, off, "write", io.ErrShortWrite, unix.Pwrite)
}

func (v *Volume) transfer(buf []byte, off int64, op string, short error, syscall func(int, []byte, int64) (int, error)) error {
	if !aligned(buf, off) {
		return fmt.Errorf("%s %s at %d: %d bytes not in aligned whole %d-byte blocks", op, v.path, off, len(buf), BlockSize)
	}
	for done := 0; done < len(buf); {
		n, err := syscall(v.fd, buf[done:], off+int64(done))
		switch {
		case err == unix.EINTR:
			continue
		case err != nil:
			return fmt.Errorf("%s %s at %d: %w", op, v.path, off+int64(done), err)
		case n == 0:
			return fmt.Errorf("%s %s at %d: %w", op, v.path, off+int64(done), short)
		}
		done += n
	}
	return nil
}

// Close closes the volume.
func (v *Volume) Close() error {
	if err := unix.Close(v.fd); err != nil {
		return fmt.Errorf("close %s: %w", v.path, err)
	}
	return nil
}

// AlignedBuffer returns n zeroed bytes starting on a BlockSize boundary, as O_DIRECT
// needs. Go's heap does not move objects, so the alignment holds for the buffer's life.
func AlignedBuffer(n int) []byte {
	b := make([]byte, n+BlockSize)
	skip := (BlockSize - int(uintptr(unsafe.Pointer(&b[0]))%BlockSize)) % BlockSize
	return b[skip : skip+n : skip+n]
}

func aligned(buf []byte, off int64) bool {
	return len(buf) > 0 && len(buf)%BlockSize == 0 && off%BlockSize == 0 &&
		uintptr(unsafe.Pointer(&buf[0]))%BlockSize == 0
}

// blockOffset is the byte offset of host id's mailbox (0 is the events block).
func blockOffset(id int) int64 { return int64(id) * BlockSize }

// Init zeroes the used area of a volume: every mailbox and the events block.
func (v *Volume) Init() error { return v.WriteAt(AlignedBuffer(UsedSize), 0) }

// newBackoff paces retries after I/O errors: from 10 ms, doubling up to 5 s.
func newBackoff() backoff.Backoff { return backoff.New(10*time.Millisecond, 5*time.Second) }

// openVolumes opens an inbox and an outbox, closing the first if the second fails.
func openVolumes(inbox, outbox string, opts VolumeOptions) (in, out *Volume, err error) {
	if inbox == "" || outbox == "" {
		return nil, nil, errors.New("both an inbox and an outbox path are needed")
	}
	if in, err = OpenVolume(inbox, opts); err != nil {
		return nil, nil, err
	}
	if out, err = OpenVolume(outbox, opts); err != nil {
		in.Close()
		return nil, nil, err
	}
	return in, out, nil
}
