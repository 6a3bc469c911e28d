package watch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Dev is a block device number.
type Dev struct{ Major, Minor uint32 }

func (d Dev) String() string { return fmt.Sprintf("%d:%d", d.Major, d.Minor) }

// kernel is the in-kernel dev_t encoding the tracepoint reports (MKDEV).
func (d Dev) kernel() uint32 { return d.Major<<20 | d.Minor }

func devFromKernel(k uint32) Dev { return Dev{Major: k >> 20, Minor: k & (1<<20 - 1)} }

// DevOf returns the device number of the block device at path.
func DevOf(path string) (Dev, error) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return Dev{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&unix.S_IFMT != unix.S_IFBLK {
		return Dev{}, fmt.Errorf("%s is not a block device", path)
	}
	d := Dev{Major: unix.Major(st.Rdev), Minor: unix.Minor(st.Rdev)}
	if d.Minor >= 1<<20 || d.Major >= 1<<12 {
		return Dev{}, fmt.Errorf("%s: device %s does not fit the kernel's dev_t", path, d)
	}
	return d, nil
}

// ErrPartition is returned by Arm for a partition: block_bio_queue reports a
// partition's writes on its whole disk, at disk sectors, so its arming would
// never fire.
var ErrPartition = errors.New("is a partition: the block layer reports its writes on the whole disk; arm the disk or an LV instead")

// sysfsDir is the device's directory in sysfs.
func (d Dev) sysfsDir() string { return fmt.Sprintf("/sys/dev/block/%d:%d", d.Major, d.Minor) }

// identity is what Arm records of a device: its diskseq (0 where the kernel has
// none or the device does not exist), after refusing partitions.
func identity(d Dev) (uint64, error) {
	dir := d.sysfsDir()
	if _, err := os.Stat(filepath.Join(dir, "partition")); err == nil {
		return 0, fmt.Errorf("%s: %w", d, ErrPartition)
	}
	return diskSeq(dir)
}

// present reports whether the device exists, with its diskseq. Read reads
// it for every event, so the common case costs one file read.
func (d Dev) present() (bool, uint64, error) {
	dir := d.sysfsDir()
	if seq, err := diskSeq(dir); seq != 0 || err != nil {
		return err == nil, seq, err
	}
	// No diskseq: an old kernel, or no such device.
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return false, 0, nil
	} else if err != nil {
		return false, 0, fmt.Errorf("%s: %w", d, err)
	}
	return true, 0, nil
}

// diskSeq reads the kernel's diskseq (5.15 and later): a number that a new
// device, or a loop device attached anew, never shares with an earlier one of
// the same dev_t.
func diskSeq(dir string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(dir, "diskseq"))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read diskseq: %w", err)
	}
	seq, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse %s/diskseq: %w", dir, err)
	}
	return seq, nil
}
