package uevent

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"

	"golang.org/x/sys/unix"
)

// ErrOverflow is returned by Read when the kernel dropped events because the
// socket's receive buffer was full (ENOBUFS), or a datagram came truncated.
// Events were lost and nothing says which: the caller must rescan the devices
// it cares about (sysfs) and may go on reading from the same Listener. Read
// also discards what was still queued, so the rescan must come after it.
var ErrOverflow = errors.New("uevent: events lost (receive buffer overflowed): rescan the devices")

const (
	// kernelGroup is the multicast group of the kernel's own uevents; udev
	// rebroadcasts its processed events on group 2.
	kernelGroup = 1
	// rcvBuf is the receive buffer asked for. A burst (a VG of hundreds of LVs
	// activated at once, a multipath rescan) sends thousands of events in a few
	// milliseconds; the kernel drops what does not fit. Memory is only used while
	// events wait to be read.
	rcvBuf = 16 << 20
	// maxMessage is more than a uevent can be: the kernel's environment buffer
	// (UEVENT_BUFFER_SIZE) is 2048 bytes, and the header repeats the DEVPATH in it.
	maxMessage = 8 << 10
)

// Listener receives the kernel's uevents of one subsystem.
// Read must be called from one goroutine at a time; Close from any.
type Listener struct {
	f         *os.File
	conn      syscall.RawConn
	subsystem string
	buf       []byte
	closed    atomic.Bool
}

// Listen opens a uevent socket for the kernel's events of subsystem (e.g. "block";
// "" for every subsystem). Events sent before Listen returns are not seen: a
// caller that needs the current state reads sysfs after Listen.
func Listen(subsystem string) (*Listener, error) {
	// Nonblocking, so that reads go through the runtime's poller and Close can
	// interrupt one.
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		return nil, fmt.Errorf("uevent: open netlink socket: %w", err)
	}
	if err := setReceiveBuffer(fd); err != nil {
		unix.Close(fd)
		return nil, err
	}
	if err := unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: kernelGroup}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("uevent: bind netlink socket to the kernel's group: %w", err)
	}
	f := os.NewFile(uintptr(fd), "uevent")
	conn, err := f.SyscallConn()
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("uevent: %w", err)
	}
	return &Listener{f: f, conn: conn, subsystem: subsystem, buf: make([]byte, maxMessage)}, nil
}

// setReceiveBuffer sets a receive buffer of rcvBuf bytes. SO_RCVBUFFORCE passes
// net.core.rmem_max but needs CAP_NET_ADMIN; without it SO_RCVBUF gets what the
// limit allows.
func setReceiveBuffer(fd int) error {
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, rcvBuf); err == nil {
		return nil
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUF, rcvBuf); err != nil {
		return fmt.Errorf("uevent: set receive buffer: %w", err)
	}
	return nil
}

// Read blocks until the kernel's next event of the Listener's subsystem.
// It returns ErrOverflow when events were lost (see there), an error wrapping
// os.ErrClosed once Close was called, and a parse error, after which reading may
// go on, for a kernel message of its subsystem that it cannot decode.
func (l *Listener) Read() (Event, error) {
	for {
		msg, err := l.receive()
		if err != nil {
			return Event{}, err
		}
		if msg == nil {
			continue // not from the kernel, or interrupted
		}
		e, err := Parse(msg)
		if err != nil {
			if l.subsystem != "" && !bytes.Contains(msg, []byte("\x00SUBSYSTEM="+l.subsystem+"\x00")) {
				continue // another subsystem's trouble
			}
			return Event{}, err
		}
		if l.subsystem == "" || e.Subsystem == l.subsystem {
			return e, nil
		}
	}
}

// receive returns the next datagram, or nil for one to drop.
func (l *Listener) receive() ([]byte, error) {
	var (
		n    int
		from unix.Sockaddr
		rerr error
	)
	err := l.conn.Read(func(fd uintptr) bool {
		// MSG_TRUNC: n is the datagram's real length, so a cut one is noticed.
		n, from, rerr = unix.Recvfrom(int(fd), l.buf, unix.MSG_TRUNC)
		if rerr == unix.ENOBUFS {
			l.drain(int(fd))
		}
		return rerr != unix.EAGAIN
	})
	if l.closed.Load() {
		return nil, fmt.Errorf("uevent: read: %w", os.ErrClosed)
	}
	if err != nil {
		return nil, fmt.Errorf("uevent: read: %w", err)
	}
	switch {
	case rerr == unix.ENOBUFS:
		return nil, ErrOverflow
	case rerr == unix.EINTR:
		return nil, nil
	case rerr != nil:
		return nil, fmt.Errorf("uevent: read: %w", rerr)
	}
	// Any local process with CAP_NET_ADMIN can send to this group; only the
	// kernel's port id is 0.
	if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
		return nil, nil
	}
	if n > len(l.buf) {
		return nil, fmt.Errorf("uevent: datagram of %d bytes cut to %d: %w", n, len(l.buf), ErrOverflow)
	}
	return l.buf[:n], nil
}

// drain discards the datagrams queued on fd. After an overflow the kernel drops
// every new event, with no further ENOBUFS, until the queue has been emptied:
// emptied before Read returns ErrOverflow, the caller's rescan cannot miss an
// event that comes after it. What is discarded came before the rescan.
func (l *Listener) drain(fd int) {
	// Bounded in case events come as fast as they are read.
	for range 1 << 17 {
		_, _, err := unix.Recvfrom(fd, l.buf, unix.MSG_DONTWAIT)
		if err == unix.EAGAIN {
			return
		}
	}
}

// Close closes the socket; a Read under way returns an error wrapping os.ErrClosed.
func (l *Listener) Close() error {
	if l.closed.Swap(true) {
		return nil
	}
	if err := l.f.Close(); err != nil {
		return fmt.Errorf("uevent: close: %w", err)
	}
	return nil
}
