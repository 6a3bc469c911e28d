package testvm

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lvwatch/lvwatch/internal/testutil"
)

// Options are what Boot and Start boot.
type Options struct {
	// Drives are the VM's disks, /dev/vda, /dev/vdb... in the guest, all
	// written at once. Empty fields default to Format qcow2, Cache none,
	// AIO native, Werror QEMU's (enospc).
	Drives []Drive
	// DataMiB is how much the guest writes to each drive and reads back; 16 when 0.
	DataMiB int
	// QMP are paths for QMP sockets of the VM, VM.QMP(0)... in this order (a
	// socket left there before is replaced; any other file is an error).
	QMP []string
	// Monitors is the number of QMP sockets in a directory of the VM's own,
	// after those of QMP; 1 when 0 and QMP is empty. Each socket serves one
	// client at a time.
	Monitors int
	// Console, when set, gets the serial console and QEMU's own messages as
	// they come, besides the VM's copy (Console, Wait).
	Console io.Writer
	// Machine is the VM's machine type: Q35 when empty, or MicroVM.
	Machine string
}

// The machine types.
const (
	// Q35 is a PC: SeaBIOS, PCI and virtio-blk-pci disks.
	Q35 = "q35"
	// MicroVM is QEMU's minimal machine: qboot, no PCI, virtio-mmio disks that
	// ACPI describes. It boots faster where every instruction counts (a VM in
	// a VM under TCG).
	MicroVM = "microvm"
)

const defaultDataMiB = 16

// machineArgs are the VM's hardware: one emulated CPU and little memory (the
// writer streams its data); q35 found its virtio disks faster than pc here.
var machineArgs = []string{"-accel", "tcg", "-cpu", "max", "-smp", "1", "-m", "256"}

// machines are each machine type's QEMU option, its disks' device model and
// the modules the guest needs for them.
var machines = map[string]struct {
	option, disk string
	modules      []string
}{
	Q35:     {"q35", "virtio-blk-pci", []string{"virtio_pci", "virtio_blk"}},
	MicroVM: {"microvm,x-option-roms=off,isa-serial=on", "virtio-blk-device", []string{"virtio_mmio", "virtio_blk"}},
}

// VM is one running QEMU: Start's is killed at the end of its test, Boot's
// by Close.
type VM struct {
	console  testutil.LogBuffer // the serial console and QEMU's own messages
	monitors []string
	drives   int
	dir      string // the VM's own directory, for its monitors
	cmd      *exec.Cmd
	exited   chan struct{}
	exitErr  error // QEMU's, once exited is closed
	close    sync.Once
}

// Start is Boot for a test: the test fails when the VM does not boot, and the
// VM is killed at its end.
func Start(t testing.TB, kit Kit, opt Options) *VM {
	t.Helper()
	v, err := Boot(context.Background(), kit, opt)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(v.Close)
	return v
}

// Boot starts a VM that writes Options.DataMiB to each drive. It returns once
// the VM's monitors listen, ctx bounding that wait only: the VM runs until it
// powers off or Close kills it.
func Boot(ctx context.Context, kit Kit, opt Options) (*VM, error) {
	if len(opt.Drives) == 0 {
		return nil, errors.New("testvm: no drives")
	}
	if opt.DataMiB < 0 || opt.Monitors < 0 {
		return nil, fmt.Errorf("testvm: DataMiB %d, Monitors %d: negative", opt.DataMiB, opt.Monitors)
	}
	for i, d := range opt.Drives {
		if d.Offset < 0 || d.Offset%(1<<20) != 0 {
			return nil, fmt.Errorf("testvm: drive %d: offset %d is not a multiple of 1 MiB", i, d.Offset)
		}
	}
	opt.DataMiB = cmp.Or(opt.DataMiB, defaultDataMiB)
	machine, ok := machines[cmp.Or(opt.Machine, Q35)]
	if !ok {
		return nil, fmt.Errorf("testvm: machine %q: not %s or %s", opt.Machine, Q35, MicroVM)
	}
	if len(opt.QMP) == 0 {
		opt.Monitors = cmp.Or(opt.Monitors, 1)
	}
	for _, path := range opt.QMP {
		if err := removeSocket(path); err != nil {
			return nil, err
		}
	}
	// Not a test's TempDir: a test's name may make a socket path longer than the 107 bytes allowed.
	dir, err := os.MkdirTemp("", "testvm-")
	if err != nil {
		return nil, err
	}
	cmdline := opt.WriterParams()
	if opt.Machine == MicroVM {
		cmdline += tscParam()
	}
	args := append([]string{"-M", machine.option}, machineArgs...)
	args = append(args, BootArgs(kit.Kernel, kit.Initramfs, cmdline)...)
	for i, d := range opt.Drives {
		args = append(args, d.withDefaults().qemuArgs(i, machine.disk)...)
	}
	v := &VM{drives: len(opt.Drives), dir: dir, exited: make(chan struct{})}
	v.monitors = append(v.monitors, opt.QMP...)
	for i := range opt.Monitors {
		v.monitors = append(v.monitors, filepath.Join(dir, fmt.Sprintf("qmp%d.sock", i)))
	}
	for _, m := range v.monitors {
		args = append(args, "-qmp", "unix:"+strings.ReplaceAll(m, ",", ",,")+",server=on,wait=off")
	}
	v.cmd = exec.Command("qemu-system-x86_64", args...)
	v.cmd.Stdout, v.cmd.Stderr = &v.console, &v.console
	if opt.Console != nil {
		w := io.MultiWriter(&v.console, opt.Console)
		v.cmd.Stdout, v.cmd.Stderr = w, w
	}
	if err := v.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	go func() {
		v.exitErr = v.cmd.Wait()
		close(v.exited)
	}()
	if err := v.waitMonitors(ctx); err != nil {
		v.Close()
		return nil, err
	}
	return v, nil
}

// tscParam tells a microvm's kernel its TSC's rate, which it cannot measure
// there: it has no HPET, and under TCG in a VM (itself under TCG) the PIT
// calibration fails and the boot hangs. Under TCG the guest's TSC is this
// machine's, so its rate is this kernel's ("cpu MHz"); "" when unknown.
func tscParam() string {
	b, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		key, value, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(key) != "cpu MHz" {
			continue
		}
		mhz, err := strconv.ParseFloat(strings.TrimSpace(value), 64)
		if err != nil || mhz < 1 || mhz > 1e5 {
			return ""
		}
		return fmt.Sprintf(" tsc_early_khz=%d", int64(mhz*1000))
	}
	return ""
}

// removeSocket makes way for a monitor at path: a socket is removed (QEMU's
// would replace it anyway, and the wait for the new one must not find it);
// any other file is refused.
func removeSocket(path string) error {
	st, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		return nil
	case err != nil:
		return err
	case st.Mode().Type() != fs.ModeSocket:
		return fmt.Errorf("testvm: QMP socket %s: a file that is no socket is there", path)
	}
	return os.Remove(path)
}

// waitMonitors waits until every monitor's socket is there. The time limit
// only turns a QEMU that hangs before listening into a failure.
func (v *VM) waitMonitors(ctx context.Context) error {
	deadline := time.Now().Add(time.Minute)
	for _, m := range v.monitors {
		for ; ; time.Sleep(10 * time.Millisecond) {
			if _, err := os.Stat(m); err == nil {
				break
			}
			select {
			case <-v.exited:
				return fmt.Errorf("qemu exited before its monitor listened: %v\n%s", v.exitErr, v.Console())
			case <-ctx.Done():
				return fmt.Errorf("qemu: waiting for its monitor %s: %w", m, ctx.Err())
			default:
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("qemu did not create %s in a minute\n%s", m, v.Console())
			}
		}
	}
	return nil
}

// Close kills QEMU if it still runs, waits for it and removes the VM's own
// directory. The VM's report (Wait) stays readable.
func (v *VM) Close() {
	v.close.Do(func() {
		v.cmd.Process.Kill()
		<-v.exited
		os.RemoveAll(v.dir)
	})
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
	params := ""
	if m, ok := machines[cmp.Or(opt.Machine, Q35)]; ok {
		params = " testvm.modules=" + strings.Join(m.modules, ",")
	}
	// no_timer_check: under TCG on a busy host the kernel's timer check at boot can fail and cost seconds.
	return fmt.Sprintf("no_timer_check testvm.bytes=%d testvm.offsets=%s testvm.seed=%s%s",
		int64(cmp.Or(opt.DataMiB, defaultDataMiB))<<20, strings.Join(offsets, ","), hex.EncodeToString(seed), params)
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
