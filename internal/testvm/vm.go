package testvm

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lvwatch/lvwatch/internal/testutil"
)

// Options are what Start boots.
type Options struct {
	// Drives are the VM's disks, /dev/vda, /dev/vdb... in the guest, all
	// written at once. Empty fields default to Format qcow2, Cache none,
	// AIO native, Werror QEMU's (enospc).
	Drives []Drive
	// DataMiB is how much the guest writes to each drive and reads back; 16 when 0.
	DataMiB int
	// Monitors is the number of QMP sockets (VM.QMP); 1 when 0. Each serves one
	// client at a time.
	Monitors int
}

const defaultDataMiB = 16

// machineArgs are the VM's hardware: one emulated CPU and little memory (the
// writer streams its data); q35 found its virtio disks faster than pc here.
var machineArgs = []string{"-M", "q35", "-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "256"}

// VM is one running QEMU; it is killed at the end of the test that started it.
type VM struct {
	console  testutil.LogBuffer // the serial console and QEMU's own messages
	monitors []string
	drives   int
	exited   chan struct{}
	exitErr  error // QEMU's, once exited is closed
}

// Start boots a VM that writes Options.DataMiB to each drive. It returns once
// the VM's monitors listen.
func Start(t testing.TB, kit Kit, opt Options) *VM {
	t.Helper()
	if len(opt.Drives) == 0 {
		t.Fatal("testvm.Start: no drives")
	}
	if opt.DataMiB < 0 || opt.Monitors < 0 {
		t.Fatalf("testvm.Start: DataMiB %d, Monitors %d: negative", opt.DataMiB, opt.Monitors)
	}
	for i, d := range opt.Drives {
		if d.Offset < 0 || d.Offset%(1<<20) != 0 {
			t.Fatalf("testvm.Start: drive %d: offset %d is not a multiple of 1 MiB", i, d.Offset)
		}
	}
	opt.DataMiB = cmp.Or(opt.DataMiB, defaultDataMiB)
	opt.Monitors = cmp.Or(opt.Monitors, 1)
	// Not t.TempDir(): a test's name may make a socket path longer than the 107 bytes allowed.
	dir, err := os.MkdirTemp("", "testvm-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })

	args := append(append([]string{}, machineArgs...), BootArgs(kit.Kernel, kit.Initramfs, opt.WriterParams())...)
	for i, d := range opt.Drives {
		args = append(args, d.withDefaults().QEMUArgs(i)...)
	}
	v := &VM{drives: len(opt.Drives), exited: make(chan struct{})}
	for i := range opt.Monitors {
		path := filepath.Join(dir, fmt.Sprintf("qmp%d.sock", i))
		v.monitors = append(v.monitors, path)
		args = append(args, "-qmp", "unix:"+strings.ReplaceAll(path, ",", ",,")+",server=on,wait=off")
	}
	cmd := exec.Command("qemu-system-x86_64", args...)
	cmd.Stdout, cmd.Stderr = &v.console, &v.console
	if err := cmd.Start(); err != nil {
		t.Fatalf("start qemu: %v", err)
	}
	go func() {
		v.exitErr = cmd.Wait()
		close(v.exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-v.exited
	})
	for _, m := range v.monitors {
		// The time limit only turns a QEMU that hangs before listening into a failure.
		for deadline := time.Now().Add(time.Minute); ; time.Sleep(10 * time.Millisecond) {
			if _, err := os.Stat(m); err == nil {
				break
			}
			select {
			case <-v.exited:
				t.Fatalf("qemu exited before its monitor listened: %v\n%s", v.exitErr, v.Console())
			default:
			}
			if time.Now().After(deadline) {
				t.Fatalf("qemu did not create %s in a minute\n%s", m, v.Console())
			}
		}
	}
	return v
}

// WriterParams are the writer's parameters on the kernel command line (for a
// VM that another manager, libvirt, boots from the kit): how much to write
// where, and a fresh seed for its data.
func (opt Options) WriterParams() string {
	seed := make([]byte, 32)
	rand.Read(seed)
	var offsets []string
	for _, d := range opt.Drives {
		offsets = append(offsets, strconv.FormatInt(d.Offset, 10))
	}
	// no_timer_check: under TCG on a busy host the kernel's timer check at boot can fail and cost seconds.
	return fmt.Sprintf("no_timer_check testvm.bytes=%d testvm.offsets=%s testvm.seed=%s",
		int64(cmp.Or(opt.DataMiB, defaultDataMiB))<<20, strings.Join(offsets, ","), hex.EncodeToString(seed))
}

func (d Drive) withDefaults() Drive {
	if d.Format == "" {
		d.Format = "qcow2"
	}
	if d.Cache == "" {
		d.Cache = "none"
	}
	if d.AIO == "" && d.Cache == "none" { // native needs the O_DIRECT of cache=none
		d.AIO = "native"
	}
	return d
}

// QMP is the path of monitor i's unix socket.
func (v *VM) QMP(i int) string { return v.monitors[i] }

// Console is what the VM printed so far, with QEMU's own messages, for failure messages.
func (v *VM) Console() string { return v.console.String() }

// Result is the guest's report.
type Result struct {
	Drives []DriveResult // in the order of Options.Drives
	Done   bool          // the guest reported its end
}

// DriveResult is what the guest reported of one drive.
type DriveResult struct {
	Device   string // in the guest: vda...
	Verified bool   // all its data was written, read back and found the same
	Bytes    int64  // how much, when verified
	Error    string // the guest's reason when not verified; empty when it said nothing
}

// Wait waits until the VM powers off, however long it stays paused, and
// returns the guest's report. The error says why the guest did not verify
// every drive: QEMU failed, the guest did not finish, a drive failed, or ctx
// ended first (the VM is left running then).
func (v *VM) Wait(ctx context.Context) (Result, error) {
	select {
	case <-v.exited:
	case <-ctx.Done():
		return v.report(), fmt.Errorf("the VM is still running: %w\nconsole:\n%s", ctx.Err(), v.Console())
	}
	r := v.report()
	if v.exitErr != nil {
		return r, fmt.Errorf("qemu: %w\nconsole:\n%s", v.exitErr, v.Console())
	}
	var failed []string
	for i, d := range r.Drives {
		switch {
		case d.Verified:
		case d.Error != "":
			failed = append(failed, fmt.Sprintf("drive %d (%s): %s", i, d.Device, d.Error))
		default:
			failed = append(failed, fmt.Sprintf("drive %d: no report", i))
		}
	}
	if !r.Done {
		failed = append(failed, "the guest did not report its end")
	}
	if len(failed) > 0 {
		return r, fmt.Errorf("%s\nconsole:\n%s", strings.Join(failed, "; "), v.Console())
	}
	return r, nil
}

// The writer's lines (internal/testvm/writer).
var (
	verifiedLine = regexp.MustCompile(`^testvm: drive (\d+) (\w+) verified (\d+) bytes at offset \d+$`)
	failedLine   = regexp.MustCompile(`^testvm: drive (\d+) (\w+) failed: (.*)$`)
)

// report reads the guest's lines from the console so far.
func (v *VM) report() Result { return ParseReport(v.Console(), v.drives) }

// ParseReport reads the writer's lines for that many drives from a console
// (VM.Wait does; a test whose VM another manager runs reads its console log);
// it ignores the rest of the console, and drive numbers it has no place for.
func ParseReport(console string, drives int) Result {
	r := Result{Drives: make([]DriveResult, drives)}
	for _, line := range strings.Split(console, "\n") {
		line = strings.TrimRight(line, "\r")
		if line == "testvm: done" {
			r.Done = true
			continue
		}
		if m := verifiedLine.FindStringSubmatch(line); m != nil {
			n, _ := strconv.ParseInt(m[3], 10, 64)
			r.set(m[1], DriveResult{Device: m[2], Verified: true, Bytes: n})
		} else if m := failedLine.FindStringSubmatch(line); m != nil {
			r.set(m[1], DriveResult{Device: m[2], Error: m[3]})
		}
	}
	return r
}

// set records drive i's report, i as the guest printed it.
func (r *Result) set(i string, d DriveResult) {
	if n, err := strconv.Atoi(i); err == nil && n < len(r.Drives) {
		r.Drives[n] = d
	}
}

// Exited reports whether QEMU has exited (the guest powered off, or it failed).
func (v *VM) Exited() bool {
	select {
	case <-v.exited:
		return true
	default:
		return false
	}
}
