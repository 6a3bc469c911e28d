package dm

import (
	"context"
	"fmt"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ControlPath is the device-mapper control node.
const ControlPath = "/dev/mapper/control"

const (
	// Replies that carry data start with this much room, as libdevmapper does,
	// and double while the kernel answers DM_BUFFER_FULL_FLAG.
	initialReplySize = 16 << 10
	maxReplySize     = 64 << 20
)

// Control is an open device-mapper control node. Its methods may be called
// from several goroutines; each is one ioctl (or a few while a reply grows).
type Control struct {
	fd int
}

// Open opens the device-mapper control node.
func Open() (*Control, error) {
	fd, err := unix.Open(ControlPath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", ControlPath, err)
	}
	return &Control{fd: fd}, nil
}

// Close closes the control node.
func (c *Control) Close() error {
	return unix.Close(c.fd)
}

// DeviceID names one device the way the kernel looks it up: by exactly one of
// name, uuid or device number. Build it with ByName, ByUUID or ByDevno.
type DeviceID struct {
	name, uuid string
	dev        uint64
}

// ByName addresses the device called name (e.g. "vg-lv").
func ByName(name string) DeviceID { return DeviceID{name: name} }

// ByUUID addresses the device whose uuid is uuid (e.g. "LVM-...").
func ByUUID(uuid string) DeviceID { return DeviceID{uuid: uuid} }

// ByDevno addresses the device by its block device number.
func ByDevno(major, minor uint32) DeviceID { return DeviceID{dev: unix.Mkdev(major, minor)} }

func (id DeviceID) String() string {
	switch {
	case id.name != "":
		return "name " + strconv.Quote(id.name)
	case id.uuid != "":
		return "uuid " + strconv.Quote(id.uuid)
	default:
		return fmt.Sprintf("device %d:%d", unix.Major(id.dev), unix.Minor(id.dev))
	}
}

// Info is a device's state as the kernel reports it after most ioctls.
type Info struct {
	Name, UUID   string
	Major, Minor uint32
	OpenCount    int32
	EventNr      uint32
	TargetCount  uint32 // of the live table, or of the inactive one after a load
	Flags        uint32 // unix.DM_*_FLAG bits
}

// Suspended tells whether the device holds its I/O until a resume.
func (i Info) Suspended() bool { return i.Flags&unix.DM_SUSPEND_FLAG != 0 }

// ReadOnly tells whether the device refuses writes.
func (i Info) ReadOnly() bool { return i.Flags&unix.DM_READONLY_FLAG != 0 }

// HasLiveTable tells whether the device maps I/O through a table.
func (i Info) HasLiveTable() bool { return i.Flags&unix.DM_ACTIVE_PRESENT_FLAG != 0 }

// HasInactiveTable tells whether a loaded table waits for a resume to go live.
func (i Info) HasInactiveTable() bool { return i.Flags&unix.DM_INACTIVE_PRESENT_FLAG != 0 }

// BlockDevice is the device's node as devtmpfs names it: the kernel calls
// every mapped device dm-<minor>.
func (i Info) BlockDevice() string { return fmt.Sprintf("/dev/dm-%d", i.Minor) }

func infoOf(h header) Info {
	return Info{
		Name: h.name, UUID: h.uuid,
		Major: unix.Major(h.dev), Minor: unix.Minor(h.dev),
		OpenCount: h.openCount, EventNr: h.eventNr, TargetCount: h.targetCount, Flags: h.flags,
	}
}

// Device is one entry of List.
type Device struct {
	Name, UUID   string // UUID is empty when the device has none
	Major, Minor uint32
}

// Version is the kernel's device-mapper ioctl interface version.
type Version struct{ Major, Minor, Patch uint32 }

func (v Version) String() string { return fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Patch) }

// SuspendFlags change how Suspend quiesces a device.
type SuspendFlags uint32

const (
	// NoFlush keeps the I/O that targets hold queued (multipath with no path
	// left) queued across the suspend, instead of flushing it back up to
	// fail, as a table swap that keeps the existing mapping needs. The
	// suspend still waits for every other I/O in flight to complete; new I/O
	// waits inside device-mapper until the resume.
	NoFlush SuspendFlags = unix.DM_NOFLUSH_FLAG
	// SkipLockfs does not freeze a filesystem mounted on the device.
	SkipLockfs SuspendFlags = unix.DM_SKIP_LOCKFS_FLAG
)

// The kernel passes a resume's event_nr to udev as DM_COOKIE; its upper 16
// bits are flags for udev's device-mapper rules (libdevmapper.h). Marking the
// change event as coming from the primary source, with no semaphore to
// notify, makes udev treat it as it treats lvm's own refresh.
const (
	udevFlagsShift    = 16
	udevPrimarySource = 0x0040
)

// request is one ioctl: the command, the device it addresses and what varies in the header.
type request struct {
	ctx         context.Context // interrupts the ioctl when it ends; nil: never
	op          string          // for errors
	cmd         uint
	id          DeviceID
	flags       uint32
	eventNr     uint32
	targetCount uint32
	payload     []byte
	replyData   bool // the reply carries data: start with room for it
}

// do runs one ioctl, growing the buffer while the kernel reports it full,
// and returns the checked reply header and buffer.
func (c *Control) do(r request) (header, []byte, error) {
	size := headerSize + len(r.payload)
	if r.replyData {
		size = max(size, initialReplySize)
	}
	for {
		buf := make([]byte, size)
		err := encodeHeader(buf, header{
			// 4.0.0: the kernel refuses a request newer than itself, never an older one.
			version:     [3]uint32{unix.DM_VERSION_MAJOR, 0, 0},
			dataSize:    uint32(size),
			dataStart:   headerSize,
			targetCount: r.targetCount,
			flags:       r.flags,
			eventNr:     r.eventNr,
			dev:         r.id.dev,
			name:        r.id.name,
			uuid:        r.id.uuid,
		})
		if err != nil {
			return header{}, nil, err
		}
		copy(buf[headerSize:], r.payload)
		if errno := c.ioctl(r.ctx, r.cmd, buf); errno != 0 {
			e := &Error{Op: r.op, Errno: errno}
			if r.id != (DeviceID{}) {
				e.Device = r.id.String()
			}
			if errno == unix.EINTR {
				return header{}, nil, fmt.Errorf("%w: interrupted: %w", e, r.ctx.Err())
			}
			return header{}, nil, e
		}
		h, err := decodeHeader(buf)
		if err != nil {
			return header{}, nil, fmt.Errorf("dm %s %s: %w", r.op, r.id, err)
		}
		if h.flags&unix.DM_BUFFER_FULL_FLAG == 0 {
			return h, buf, nil
		}
		if size >= maxReplySize {
			return header{}, nil, fmt.Errorf("dm %s %s: reply larger than %d bytes", r.op, r.id, maxReplySize)
		}
		size *= 2
	}
}

// ioctl runs the ioctl, again after EINTR unless ctx has ended. The only
// ioctl that waits for long, a suspend waiting for I/O in flight, waits
// interruptibly (the kernel's dm_wait_for_completion) and undoes the suspend
// when a signal interrupts it. So once ctx ends, the thread blocked in it
// gets interruptSignal until the ioctl returns.
func (c *Control) ioctl(ctx context.Context, cmd uint, buf []byte) unix.Errno {
	if ctx == nil {
		ctx = context.Background()
	}
	if ctx.Done() != nil {
		if err := interruptible(); err != nil {
			return err.(unix.Errno)
		}
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		stop := interruptOnDone(ctx, unix.Gettid())
		defer stop()
	}
	for {
		if ctx.Err() != nil {
			return unix.EINTR
		}
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(c.fd), uintptr(cmd), uintptr(unsafe.Pointer(&buf[0])))
		if errno != unix.EINTR {
			return errno
		}
	}
}

// interruptSignal interrupts a suspend: a real-time signal nothing in Go
// uses, for which the runtime installs a handler that ignores it.
const interruptSignal = unix.Signal(63)

// interruptible makes interruptSignal end the syscall it interrupts. Device-
// mapper returns -ERESTARTSYS from an interrupted wait (since 2023, in stable
// kernels too), which the kernel restarts after a handler installed with
// SA_RESTART, as the Go runtime installs every one: so the runtime's handler
// for this one signal is installed again without it, once.
var interruptible = sync.OnceValue(func() error {
	const saRestart = 0x10000000
	var act [4]uint64 // handler, flags, restorer, mask: read and written back whole
	sigaction := func(new, old *[4]uint64) unix.Errno {
		_, _, e := unix.RawSyscall6(unix.SYS_RT_SIGACTION, uintptr(interruptSignal),
			uintptr(unsafe.Pointer(new)), uintptr(unsafe.Pointer(old)), 8, 0, 0)
		return e
	}
	if e := sigaction(nil, &act); e != 0 {
		return e
	}
	if act[0] <= 1 { // SIG_DFL would kill the process, SIG_IGN not interrupt
		return unix.ENOTSUP
	}
	act[1] &^= saRestart
	if e := sigaction(&act, nil); e != 0 {
		return e
	}
	return nil
})

// interruptOnDone signals thread tid every millisecond once ctx has ended,
// until stop, which returns when no more signals will be sent. Until ctx ends
// it costs no goroutine: the common swap ends long before its bound.
func interruptOnDone(ctx context.Context, tid int) (stop func()) {
	var finished atomic.Bool
	signalled := make(chan struct{})
	stopSignals := context.AfterFunc(ctx, func() {
		defer close(signalled)
		for !finished.Load() {
			unix.Tgkill(unix.Getpid(), tid, interruptSignal)
			time.Sleep(time.Millisecond)
		}
	})
	return func() {
		finished.Store(true)
		if !stopSignals() { // ctx ended: wait for the signalling to stop
			<-signalled
		}
	}
}

// Version asks the kernel for its ioctl interface version.
func (c *Control) Version() (Version, error) {
	h, _, err := c.do(request{op: "version", cmd: unix.DM_VERSION})
	if err != nil {
		return Version{}, err
	}
	return Version{h.version[0], h.version[1], h.version[2]}, nil
}

// List returns every device-mapper device, with its uuid.
func (c *Control) List() ([]Device, error) {
	h, buf, err := c.do(request{op: "list devices", cmd: unix.DM_LIST_DEVICES, flags: unix.DM_UUID_FLAG, replyData: true})
	if err != nil {
		return nil, err
	}
	devs, err := decodeNameList(buf, h)
	if err != nil {
		return nil, fmt.Errorf("dm list devices: %w", err)
	}
	return devs, nil
}

// Info returns the state of one device.
func (c *Control) Info(id DeviceID) (Info, error) {
	h, _, err := c.do(request{op: "info", cmd: unix.DM_DEV_STATUS, id: id})
	return infoOf(h), err
}

// Table returns the device's state and its live table.
func (c *Control) Table(id DeviceID) (Info, []Target, error) {
	return c.tableStatus(id, "table", unix.DM_STATUS_TABLE_FLAG)
}

// Status returns the device's state and each live target's status line.
func (c *Control) Status(id DeviceID) (Info, []Target, error) {
	return c.tableStatus(id, "status", 0)
}

func (c *Control) tableStatus(id DeviceID, op string, flags uint32) (Info, []Target, error) {
	h, buf, err := c.do(request{op: op, cmd: unix.DM_TABLE_STATUS, id: id, flags: flags, replyData: true})
	if err != nil {
		return Info{}, nil, err
	}
	targets, err := decodeTargets(buf, h)
	if err != nil {
		return Info{}, nil, fmt.Errorf("dm %s %s: %w", op, id, err)
	}
	return infoOf(h), targets, nil
}

// Load puts table in the device's inactive slot; Resume makes it live. The
// device is writable once it is: see LoadReadOnly.
func (c *Control) Load(id DeviceID, table []Target) (Info, error) {
	return c.load(id, table, 0)
}

// LoadReadOnly is Load for a table that Resume makes live read-only. The
// kernel sets the device's read-only state from each table it resumes on.
func (c *Control) LoadReadOnly(id DeviceID, table []Target) (Info, error) {
	return c.load(id, table, unix.DM_READONLY_FLAG)
}

func (c *Control) load(id DeviceID, table []Target, flags uint32) (Info, error) {
	payload, err := encodeTargets(table)
	if err != nil {
		return Info{}, err
	}
	h, _, err := c.do(request{op: "table load", cmd: unix.DM_TABLE_LOAD, id: id, flags: flags,
		targetCount: uint32(len(table)), payload: payload})
	return infoOf(h), err
}

// ClearInactive drops a table loaded but not yet made live.
func (c *Control) ClearInactive(id DeviceID) (Info, error) {
	h, _, err := c.do(request{op: "table clear", cmd: unix.DM_TABLE_CLEAR, id: id})
	return infoOf(h), err
}

// Suspend stops the device's I/O, as flags say, until Resume. It returns
// once the I/O in flight has completed; if ctx ends first, the kernel gives
// up waiting and undoes the suspend, and the error wraps ctx's.
func (c *Control) Suspend(ctx context.Context, id DeviceID, flags SuspendFlags) (Info, error) {
	h, _, err := c.do(request{ctx: ctx, op: "suspend", cmd: unix.DM_DEV_SUSPEND, id: id, flags: unix.DM_SUSPEND_FLAG | uint32(flags)})
	return infoOf(h), err
}

// Resume makes a loaded inactive table live, if there is one, and restarts I/O.
func (c *Control) Resume(id DeviceID) (Info, error) {
	h, _, err := c.do(request{op: "resume", cmd: unix.DM_DEV_SUSPEND, id: id, eventNr: udevPrimarySource << udevFlagsShift})
	return infoOf(h), err
}

// Create makes a new device with no table; Load and Resume activate it.
func (c *Control) Create(name, uuid string) (Info, error) {
	h, _, err := c.do(request{op: "create", cmd: unix.DM_DEV_CREATE, id: DeviceID{name: name, uuid: uuid}})
	return infoOf(h), err
}

// Remove deletes a device that nothing holds open.
func (c *Control) Remove(id DeviceID) error {
	_, _, err := c.do(request{op: "remove", cmd: unix.DM_DEV_REMOVE, id: id})
	return err
}
