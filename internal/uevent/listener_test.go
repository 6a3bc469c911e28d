package uevent

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lvwatch/lvwatch/internal/blockdev"
	"github.com/lvwatch/lvwatch/internal/loopdev"
	"github.com/lvwatch/lvwatch/internal/testutil"
	"golang.org/x/sys/unix"
)

// eventWait bounds every wait for an event: it turns a missing one into a failure.
const eventWait = 30 * time.Second

// listen opens a Listener that closes itself after eventWait, which ends a Read
// waiting for an event that never comes.
func listen(t *testing.T, subsystem string) *Listener {
	t.Helper()
	l, err := Listen(subsystem)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.AfterFunc(eventWait, func() { l.Close() })
	t.Cleanup(func() {
		deadline.Stop()
		l.Close()
	})
	return l
}

// next returns the next event that match accepts, skipping the others.
func next(t *testing.T, l *Listener, what string, match func(Event) bool) Event {
	t.Helper()
	for {
		e, err := l.Read()
		if errors.Is(err, os.ErrClosed) {
			t.Fatalf("no %s within %v", what, eventWait)
		}
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		if match(e) {
			t.Logf("%s: %s %s %v", what, e.Action, e.DevPath, e.Env)
			return e
		}
	}
}

func sysfs(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// What the kernel sends for a loop device's life in lvwatch's tests and demo:
// loop devices exist before they are attached (loop0..7 at boot), so attaching
// sends no "add" and detaching no "remove", only changes. On 6.18:
//
//	attach (LOOP_CONFIGURE)  change
//	LOOP_SET_CAPACITY        change RESIZE=1
//	detach (LOOP_CLR_FD)     change, then change DISK_MEDIA_CHANGE=1
//
// all with the same DISKSEQ, which tells them from events of an earlier or
// later user of the same device number.
func TestLoopAttachResizeDetach(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireFile(t, "/dev/loop-control", "loop devices")
	l := listen(t, "block")

	backing := filepath.Join(t.TempDir(), "disk")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, 8<<20); err != nil {
		t.Fatal(err)
	}
	dev, err := loopdev.Attach(backing)
	if err != nil {
		t.Fatal(err)
	}
	attached := true
	t.Cleanup(func() {
		if attached {
			dev.Close()
		}
	})
	sys := fmt.Sprintf("/sys/dev/block/%d:%d", dev.Major, dev.Minor)
	diskseq := sysfs(t, sys+"/diskseq")
	ours := func(e Event) bool {
		return e.Major == dev.Major && e.Minor == dev.Minor && e.Env["DISKSEQ"] == diskseq
	}
	check := func(e Event, action string, keys ...string) {
		t.Helper()
		if e.Action != action || e.Subsystem != "block" || e.DevName != filepath.Base(dev.Path) ||
			e.DevType != "disk" || e.Dev() != unix.Mkdev(dev.Major, dev.Minor) {
			t.Errorf("event %+v, want %s of %s (%d:%d)", e, action, dev.Path, dev.Major, dev.Minor)
		}
		for _, k := range []string{"RESIZE", "DISK_MEDIA_CHANGE"} {
			want := ""
			for _, kk := range keys {
				if kk == k {
					want = "1"
				}
			}
			if e.Env[k] != want {
				t.Errorf("%s %s=%q, want %q", action, k, e.Env[k], want)
			}
		}
	}

	check(next(t, l, "attach of "+dev.Path, ours), "change")

	if err := os.Truncate(backing, 16<<20); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(dev.Path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	err = unix.IoctlSetInt(int(f.Fd()), unix.LOOP_SET_CAPACITY, 0)
	f.Close()
	if err != nil {
		t.Fatalf("LOOP_SET_CAPACITY %s: %v", dev.Path, err)
	}
	e := next(t, l, "resize of "+dev.Path, ours)
	check(e, "change", "RESIZE")
	if !e.Resize() {
		t.Errorf("resize event %v: Resize() false", e.Env)
	}
	if size, err := blockdev.Size(dev.Path); err != nil || size != 16<<20 {
		t.Errorf("%s size after the resize event = %d, %v; want %d", dev.Path, size, err, 16<<20)
	}

	attached = false
	if err := dev.Close(); err != nil {
		t.Fatal(err)
	}
	check(next(t, l, "detach of "+dev.Path, ours), "change")
	check(next(t, l, "media change of "+dev.Path, ours), "change", "DISK_MEDIA_CHANGE")
	if _, err := os.Stat(sys); err != nil {
		t.Errorf("%s after detach: %v; the loop device should stay", sys, err)
	}
}

// addLoop creates a new loop device (LOOP_CTL_ADD), whose appearance is an "add",
// and removes it at the end of the test if the test did not.
func addLoop(t *testing.T) (ctl *os.File, n int) {
	t.Helper()
	ctl, err := os.OpenFile("/dev/loop-control", os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	// Far above the devices other tests take (LOOP_CTL_GET_FREE takes the lowest).
	for n = 100; ; n++ {
		_, _, errno := unix.Syscall(unix.SYS_IOCTL, ctl.Fd(), unix.LOOP_CTL_ADD, uintptr(n))
		if errno == 0 {
			break
		}
		if errno != unix.EEXIST || n == 1000 {
			ctl.Close()
			t.Fatalf("LOOP_CTL_ADD %d: %v", n, errno)
		}
	}
	t.Cleanup(func() {
		unix.Syscall(unix.SYS_IOCTL, ctl.Fd(), unix.LOOP_CTL_REMOVE, uintptr(n)) // ENODEV once removed
		ctl.Close()
	})
	return ctl, n
}

func TestLoopAddRemove(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireFile(t, "/dev/loop-control", "loop devices")
	l := listen(t, "block")

	ctl, n := addLoop(t)
	name := fmt.Sprintf("loop%d", n)
	named := func(e Event) bool { return e.DevName == name }
	add := next(t, l, "add of "+name, named)
	dev := sysfs(t, "/sys/block/"+name+"/dev")
	if add.Action != "add" || add.DevType != "disk" || fmt.Sprintf("%d:%d", add.Major, add.Minor) != dev ||
		add.DevPath != "/devices/virtual/block/"+name {
		t.Errorf("add event %+v, want add of %s (%s)", add, name, dev)
	}

	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, ctl.Fd(), unix.LOOP_CTL_REMOVE, uintptr(n)); errno != 0 {
		t.Fatalf("LOOP_CTL_REMOVE %d: %v", n, errno)
	}
	rm := next(t, l, "remove of "+name, named)
	if rm.Action != "remove" || rm.Dev() != add.Dev() || rm.DevPath != add.DevPath {
		t.Errorf("remove event %+v, want remove of %s (%s)", rm, name, dev)
	}
}

// send sends msg to the kernel's uevent group from a process's socket, as any
// process with CAP_NET_ADMIN can.
func send(t *testing.T, msg string) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, unix.NETLINK_KOBJECT_UEVENT)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Sendto(fd, []byte(msg), 0, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: kernelGroup}); err != nil {
		t.Fatalf("send to the uevent group: %v", err)
	}
}

func TestOnlyKernelSenders(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireFile(t, "/dev/loop-control", "loop devices")
	l := listen(t, "block")
	_, n := addLoop(t)
	name := fmt.Sprintf("loop%d", n)
	named := func(e Event) bool { return e.DevName == name }
	add := next(t, l, "add of "+name, named)

	// A well-formed remove of that device, from a process, then a change from the
	// kernel (a write to its uevent file): Read must return the kernel's first.
	devpath := "/devices/virtual/block/" + name
	send(t, fmt.Sprintf("remove@%s\x00ACTION=remove\x00DEVPATH=%s\x00SUBSYSTEM=block\x00FORGED=1\x00MAJOR=%d\x00MINOR=%d\x00DEVNAME=%s\x00DEVTYPE=disk\x00SEQNUM=1\x00",
		devpath, devpath, add.Major, add.Minor, name))
	if err := os.WriteFile("/sys/block/"+name+"/uevent", []byte("change"), 0); err != nil {
		t.Fatal(err)
	}
	e := next(t, l, "synthetic change of "+name, named)
	if e.Action != "change" || e.Env["FORGED"] != "" || e.Env["SYNTH_UUID"] != "0" {
		t.Errorf("event %v, want the kernel's change (SYNTH_UUID=0), not the forged remove", e.Env)
	}
}

func TestOverflow(t *testing.T) {
	testutil.RequireRoot(t)
	testutil.RequireFile(t, "/dev/loop-control", "loop devices")
	l := listen(t, "block")
	setBuf := func(opt, size int) {
		t.Helper()
		var serr error
		if err := l.conn.Control(func(fd uintptr) { serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, opt, size) }); err != nil || serr != nil {
			t.Fatal(err, serr)
		}
	}
	setBuf(unix.SO_RCVBUF, 0) // the kernel's minimum, a datagram or two
	filler := "change@/x\x00ACTION=change\x00DEVPATH=/x\x00SUBSYSTEM=block\x00PAD=" + strings.Repeat("x", 1000) + "\x00"
	for range 64 {
		send(t, filler)
	}
	if _, err := l.Read(); !errors.Is(err, ErrOverflow) {
		t.Fatalf("Read after a burst into a full buffer: %v, want ErrOverflow", err)
	}

	// The Listener goes on after an overflow.
	setBuf(unix.SO_RCVBUFFORCE, rcvBuf)
	_, n := addLoop(t)
	name := fmt.Sprintf("loop%d", n)
	if e := next(t, l, "add of "+name+" after the overflow", func(e Event) bool { return e.DevName == name }); e.Action != "add" {
		t.Errorf("event %+v, want the add of %s", e, name)
	}
}

func TestCloseUnblocksRead(t *testing.T) {
	l, err := Listen("block")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		for {
			// Events of other block devices may come first.
			if _, err := l.Read(); err != nil {
				done <- err
				return
			}
		}
	}()
	time.Sleep(50 * time.Millisecond) // let Read block
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, os.ErrClosed) {
			t.Errorf("Read after Close: %v, want os.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Read still blocked 10 s after Close")
	}
	if _, err := l.Read(); !errors.Is(err, os.ErrClosed) {
		t.Errorf("Read on a closed Listener: %v, want os.ErrClosed", err)
	}
	if err := l.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}
