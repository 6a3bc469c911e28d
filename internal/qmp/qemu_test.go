package qmp

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lvwatch/lvwatch/internal/testutil"
)

// These tests meet a real QEMU (tools/deps.sh installs it): a VM without a guest OS,
// which is all QMP needs, or with a boot sector that writes one sector.

func lookPath(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		testutil.SkipOrFail(t, name+" not in PATH")
	}
	return p
}

// qemuImg creates a qcow2 image of size bytes.
func qemuImg(t *testing.T, path string, size int64) {
	t.Helper()
	out, err := exec.Command(lookPath(t, "qemu-img"), "create", "-q", "-f", "qcow2", path, strconv.FormatInt(size, 10)).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
}

// startQEMU runs a stopped (-S) VM with args and returns its QMP socket once QEMU
// listens on it. The VM is killed at the test's end.
func startQEMU(t *testing.T, args ...string) string {
	t.Helper()
	qemu := lookPath(t, "qemu-system-x86_64")
	sock := filepath.Join(t.TempDir(), "qmp.sock")
	cmd := exec.Command(qemu, append([]string{"-accel", "tcg", "-nodefaults", "-display", "none", "-S",
		"-qmp", "unix:" + sock + ",server=on,wait=off"}, args...)...)
	var stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stderr, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() {
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			t.Logf("qemu: %s", stderr.Bytes())
		}
	})
	testutil.WaitFor(t, backstop, "QEMU's QMP socket", func() bool {
		select {
		case <-exited:
			t.Fatalf("qemu exited: %s", stderr.Bytes())
		default:
		}
		_, err := os.Stat(sock)
		return err == nil
	})
	return sock
}

// waitEvent returns the next event called name, skipping others.
func waitEvent(ctx context.Context, t *testing.T, c *Conn, name string) Event {
	t.Helper()
	for {
		select {
		case e, ok := <-c.Events():
			if !ok {
				t.Fatalf("connection ended waiting for %s", name)
			}
			if e.Name == name {
				return e
			}
			t.Logf("event %s %s", e.Name, e.Data)
		case <-ctx.Done():
			t.Fatalf("no %s event: %v", name, ctx.Err())
		}
	}
}

func requireStatus(ctx context.Context, t *testing.T, c *Conn, want Status) {
	t.Helper()
	s, err := c.QueryStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s != want {
		t.Fatalf("status %+v, want %+v", s, want)
	}
}

func TestQEMU(t *testing.T) {
	img := filepath.Join(t.TempDir(), "disk.qcow2")
	qemuImg(t, img, 64<<20)
	sock := startQEMU(t, "-drive", "file="+img+",format=qcow2,if=none,id=d0,cache=none,werror=stop",
		"-device", "virtio-blk-pci,drive=d0")
	ctx := testCtx(t)
	c, err := Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Logf("QEMU %v", c.Version())
	if c.Version().Major == 0 {
		t.Errorf("version %+v", c.Version())
	}

	requireStatus(ctx, t, c, Status{StatusPrelaunch, false})
	blocks, err := c.QueryBlock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	b := findBlock(t, blocks, "d0")
	if b.IOStatus != IOStatusOK || b.Inserted == nil || b.Inserted.Image == nil ||
		b.Inserted.Image.Filename != img || b.Inserted.Image.Format != "qcow2" || b.Inserted.Image.VirtualSize != 64<<20 {
		t.Errorf("d0 %+v, inserted %+v", b, b.Inserted)
	}
	stats, err := c.QueryBlockstats(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s := findStats(t, stats, "d0"); s.Parent == nil || s.Parent.NodeName == "" {
		t.Errorf("d0 stats %+v", s)
	}

	// The monitor serves one client: a second one is not greeted while this one
	// stays, and Dial returns at its context's end.
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	if c2, err := Dial(short, sock); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("second client's Dial: %v, want the deadline", err)
		if err == nil {
			c2.Close()
		}
	}
	cancel()

	if err := c.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	if e := waitEvent(ctx, t, c, EventResume); e.Time.IsZero() {
		t.Errorf("RESUME without a time: %+v", e)
	}
	requireStatus(ctx, t, c, Status{StatusRunning, true})
	if err := c.Execute(ctx, "stop", nil, nil); err != nil {
		t.Fatal(err)
	}
	waitEvent(ctx, t, c, EventStop)
	requireStatus(ctx, t, c, Status{StatusPaused, false})
	var qe *Error
	if err := c.Execute(ctx, "no-such-command", nil, nil); !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Errorf("unknown command: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}

	// Close released the socket: the next client is greeted.
	c, err = Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	requireStatus(ctx, t, c, Status{StatusPaused, false})
}

// bootSector is a BIOS boot sector (real mode, loaded at 0x7c00) that writes itself
// to sector 0 of the second disk, BIOS drive 0x81, then halts:
//
//	cli; xor ax,ax; mov ds,ax; mov es,ax; mov ss,ax; mov sp,0x7c00; sti
//	mov ax,0x0301 (write 1 sector); mov cx,0x0001 (cylinder 0, sector 1)
//	mov dx,0x0081 (head 0, drive 0x81); mov bx,0x7c00 (from es:bx); int 0x13
//	hang: hlt; jmp hang
//
// The write reaches QEMU through the disk's virtio-blk device, as a guest's does.
func bootSector() []byte {
	b := make([]byte, 1<<20) // on a 64 KiB disk SeaBIOS's int 0x13 wrote nothing
	copy(b, []byte{
		0xfa, 0x31, 0xc0, 0x8e, 0xd8, 0x8e, 0xc0, 0x8e, 0xd0, 0xbc, 0x00, 0x7c, 0xfb,
		0xb8, 0x01, 0x03, 0xb9, 0x01, 0x00, 0xba, 0x81, 0x00, 0xbb, 0x00, 0x7c, 0xcd, 0x13,
		0xf4, 0xeb, 0xfd,
	})
	b[510], b[511] = 0x55, 0xaa
	return b
}

// TestQEMUResumeAfterNoSpace is lvwatch's case in small: a guest's write to a qcow2
// image finds no space, QEMU (werror=stop) stops the VM, the space grows, and Cont
// resumes the VM, whose write then completes.
func TestQEMUResumeAfterNoSpace(t *testing.T) {
	testutil.RequireRoot(t) // mounts a tmpfs: a file system that can be filled and grown
	dir := t.TempDir()
	boot := filepath.Join(dir, "boot.raw")
	if err := os.WriteFile(boot, bootSector(), 0o644); err != nil {
		t.Fatal(err)
	}
	img := filepath.Join(dir, "disk.qcow2")
	qemuImg(t, img, 1<<30)
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	// Room for the new image's metadata and 16 KiB more: the first write needs a
	// 64 KiB cluster.
	full := filepath.Join(dir, "full")
	if err := os.Mkdir(full, 0o755); err != nil {
		t.Fatal(err)
	}
	size := (fi.Size()+4095)/4096*4096 + 16<<10
	if err := unix.Mount("tmpfs", full, "tmpfs", 0, "size="+strconv.FormatInt(size, 10)); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	t.Cleanup(func() { unix.Unmount(full, 0) }) // after QEMU's end, registered later
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	img = filepath.Join(full, "disk.qcow2")
	if err := os.WriteFile(img, data, 0o644); err != nil {
		t.Fatal(err)
	}

	sock := startQEMU(t,
		"-drive", "file="+boot+",format=raw,if=none,id=boot", "-device", "virtio-blk-pci,drive=boot,bootindex=0",
		"-drive", "file="+img+",format=qcow2,if=none,id=d1,werror=stop", "-device", "virtio-blk-pci,drive=d1")
	ctx := testCtx(t)
	c, err := Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Cont(ctx); err != nil {
		t.Fatal(err)
	}

	e := waitEvent(ctx, t, c, EventBlockIOError)
	ioe, err := e.BlockIOError()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %+v", e.Name, ioe)
	if ioe.Device != "d1" || ioe.Operation != "write" || ioe.Action != ActionStop || !ioe.NoSpace || ioe.NodeName == "" {
		t.Errorf("%+v", ioe)
	}
	waitEvent(ctx, t, c, EventStop)
	requireStatus(ctx, t, c, Status{StatusIOError, false})
	blocks, err := c.QueryBlock(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s := findBlock(t, blocks, "d1").IOStatus; s != IOStatusNoSpace {
		t.Errorf("d1 io-status %q, want %q", s, IOStatusNoSpace)
	}

	if err := unix.Mount("tmpfs", full, "tmpfs", unix.MS_REMOUNT, "size=8m"); err != nil {
		t.Fatalf("grow tmpfs: %v", err)
	}
	if err := c.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	waitEvent(ctx, t, c, EventResume)
	requireStatus(ctx, t, c, Status{StatusRunning, true})
	if blocks, err = c.QueryBlock(ctx); err != nil {
		t.Fatal(err)
	}
	if s := findBlock(t, blocks, "d1").IOStatus; s != IOStatusOK {
		t.Errorf("d1 io-status %q after cont", s)
	}
	var last Stats
	testutil.WaitFor(t, backstop, "the retried write to complete", func() bool {
		stats, err := c.QueryBlockstats(ctx)
		if err != nil {
			t.Fatal(err)
		}
		last = findStats(t, stats, "d1").Stats
		return last.WrOperations == 1
	})
	if last.WrBytes != 512 || last.WrHighestOffset != 512 {
		t.Errorf("d1 stats %+v", last)
	}
}
