// Package loopdev attaches files to loop block devices through the loop ioctls,
// for the demo and for tests that need a real block device.
package loopdev

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// Device is an attached loop device. It stays attached until Close.
type Device struct {
	Path         string // /dev/loopN
	Major, Minor uint32
	f            *os.File
}

// Attach binds backing to a free loop device. The device is created with
// autoclear, so it also goes away if this process dies.
func Attach(backing string) (*Device, error) {
	bf, err := os.OpenFile(backing, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open loop backing file: %w", err)
	}
	defer bf.Close()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open loop control: %w", err)
	}
	defer ctl.Close()

	// Another process may take the free device between GET_FREE and CONFIGURE.
	for attempt := 0; ; attempt++ {
		n, err := unix.IoctlRetInt(int(ctl.Fd()), unix.LOOP_CTL_GET_FREE)
		if err != nil {
			return nil, fmt.Errorf("find a free loop device: %w", err)
		}
		path := fmt.Sprintf("/dev/loop%d", n)
		dev, err := configure(path, bf)
		if errors.Is(err, unix.EBUSY) && attempt < 10 {
			continue
		}
		if err != nil {
			return nil, err
		}
		return dev, nil
	}
}

func configure(path string, backing *os.File) (*Device, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	cfg := unix.LoopConfig{Fd: uint32(backing.Fd())}
	cfg.Info.Flags = unix.LO_FLAGS_AUTOCLEAR
	copy(cfg.Info.File_name[:], filepath.Base(backing.Name()))
	if err := unix.IoctlLoopConfigure(int(f.Fd()), &cfg); err != nil {
		f.Close()
		return nil, fmt.Errorf("attach %s to %s: %w", backing.Name(), path, err)
	}
	// The read-only policy set with BLKROSET outlives a detach: clear what an earlier
	// user of this device number left.
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.BLKROSET, 0); err != nil {
		f.Close()
		return nil, fmt.Errorf("make %s writable: %w", path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		f.Close()
		return nil, fmt.Errorf("stat %s: %w", path, err)
	}
	return &Device{Path: path, Major: unix.Major(st.Rdev), Minor: unix.Minor(st.Rdev), f: f}, nil
}

// NewSparse creates a sparse file of size bytes in dir and attaches it.
func NewSparse(dir string, size int64) (*Device, error) {
	f, err := os.CreateTemp(dir, "lvwatch-loop-*.img")
	if err != nil {
		return nil, fmt.Errorf("create loop backing file: %w", err)
	}
	name := f.Name()
	err = f.Truncate(size)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(name)
		return nil, fmt.Errorf("size loop backing file: %w", err)
	}
	dev, err := Attach(name)
	// The device keeps the file open; the name is not needed any more.
	os.Remove(name)
	return dev, err
}

// Close detaches the device.
func (d *Device) Close() error {
	err := unix.IoctlSetInt(int(d.f.Fd()), unix.LOOP_CLR_FD, 0)
	if cerr := d.f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("detach %s: %w", d.Path, err)
	}
	return nil
}
