package mailbox

import (
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// alarm is what the SPM loop sleeps on: a timerfd in Go's netpoller, armed for the next
// deadline, or to fire at once when another goroutine wakes the loop. The SPM's idle cost
// is almost all wake-ups; on a VM one costs 100–200 µs of CPU, and a Go timer costs
// several (the netpoller's millisecond rounding wakes it early, sysmon wakes with it),
// where a timerfd costs one.
type alarm struct {
	f       *os.File
	fd      int
	pending atomic.Bool // a wake not yet seen by the loop
	buf     [8]byte

	mu     sync.RWMutex // keeps wake from arming a closed (maybe reused) descriptor
	closed bool
}

func newAlarm() (*alarm, error) {
	fd, err := unix.TimerfdCreate(unix.CLOCK_MONOTONIC, unix.TFD_NONBLOCK|unix.TFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("timerfd: %w", err)
	}
	return &alarm{f: os.NewFile(uintptr(fd), "spm-alarm"), fd: fd}, nil
}

// arm makes the timer fire after d (at once for d <= 0). timerfd_settime never blocks,
// so it is made without telling the Go scheduler, which would wake its monitor thread.
func (a *alarm) arm(d time.Duration) {
	spec := unix.ItimerSpec{Value: unix.NsecToTimespec(int64(max(d, 1)))}
	unix.RawSyscall6(unix.SYS_TIMERFD_SETTIME, uintptr(a.fd), 0, uintptr(unsafe.Pointer(&spec)), 0, 0, 0)
}

// wake makes the loop's wait return now (or not block next time). Any goroutine may call it.
func (a *alarm) wake() {
	if a.pending.Swap(true) {
		return
	}
	a.mu.RLock()
	defer a.mu.RUnlock()
	if !a.closed {
		a.arm(0)
	}
}

// wait sleeps until d has passed or wake is called, and reports whether it was woken.
func (a *alarm) wait(d time.Duration) (woken bool) {
	a.arm(d)
	// A wake between the last wait and the arm above was overwritten by it; its flag was not.
	if !a.pending.Load() {
		a.f.Read(a.buf[:]) // an error (closed) also ends the wait
	}
	return a.pending.Swap(false)
}

func (a *alarm) close() error {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.closed = true
	return a.f.Close()
}
