package dm

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

var (
	// ErrNoDevice means the kernel knows no device by that name, uuid or number (ENXIO).
	ErrNoDevice = errors.New("no such device-mapper device")
	// ErrBusy means the device is in use, or a device with that name or uuid exists (EBUSY).
	ErrBusy = errors.New("device-mapper device busy or already exists")
	// ErrBadReply means the kernel's reply does not decode; errors that say where wrap it.
	ErrBadReply = errors.New("malformed device-mapper reply")
)

// Error is a failed ioctl. errors.Is matches it against ErrNoDevice and ErrBusy
// by its errno, and against the errno itself.
type Error struct {
	Op     string // the ioctl, e.g. "table load"
	Device string // the device as addressed, e.g. `name "vg-lv"`
	Errno  unix.Errno
}

func (e *Error) Error() string {
	if e.Device == "" {
		return fmt.Sprintf("dm %s: %v", e.Op, e.Errno)
	}
	return fmt.Sprintf("dm %s %s: %v", e.Op, e.Device, e.Errno)
}

func (e *Error) Unwrap() error { return e.Errno }

func (e *Error) Is(target error) bool {
	switch target {
	case ErrNoDevice:
		return e.Errno == unix.ENXIO
	case ErrBusy:
		return e.Errno == unix.EBUSY
	}
	return false
}

func badReply(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrBadReply, fmt.Sprintf(format, args...))
}
