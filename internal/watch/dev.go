package watch

import (
	"fmt"
	"os"

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
