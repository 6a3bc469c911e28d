// Command testvm boots one of internal/testvm's VMs outside a Go test: Debian's
// cloud kernel and the writer's initramfs (the kit), under QEMU TCG. The guest
// writes pseudo-random data with O_DIRECT to each drive, reads it back and
// compares; on a drive whose device runs out of space (werror stop or enospc)
// QEMU pauses it until someone makes room and continues it.
//
//	testvm run --drive PATH[,werror=stop][,aio=native] [--drive ...] [--data-mib N]
//	           [--qmp SOCKET]... [--console FILE] [--kit DIR] [--machine q35|microvm] [--timeout D]
//	testvm kit [--copy DIR]
//
// run boots the VM, waits until it powers off and prints the guest's report,
// one line per drive; it exits 0 if and only if every drive verified (1 when
// one did not, 2 on bad usage). The VM has a QMP monitor at each --qmp path
// for others (an agent that resumes it) and one of its own, on which run
// prints the VM's pauses and resumes as they come:
//
//	testvm: event BLOCK_IO_ERROR d0 write nospace=true action=stop at 1796140915.123 (uptime 41.250)
//
// "uptime" is the machine's boot time clock, the one of /proc/uptime, so that
// a shell script can measure from its own moments to the VM's.
//
// kit builds the kit (it needs the module and the go command) and prints its
// two files; --copy DIR copies them into DIR, where run --kit DIR finds them
// on a machine with neither (tools/vmtest's guest, which has them in
// /vmtest/kit).
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lvwatch/lvwatch/internal/qmp"
	"github.com/lvwatch/lvwatch/internal/testvm"
)

const usage = `usage: testvm run --drive PATH[,werror=W][,aio=A][,cache=C][,format=F][,offset=BYTES][,shared] [--drive ...]
                  [--data-mib N] [--qmp SOCKET]... [--console FILE] [--kit DIR] [--machine q35|microvm] [--timeout D]
       testvm kit [--copy DIR]
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	var code int
	switch os.Args[1] {
	case "run":
		code = runMain(os.Args[2:])
	case "kit":
		code = kitMain(os.Args[2:])
	case "-h", "-help", "--help", "help":
		fmt.Print(usage)
	default:
		fmt.Fprintf(os.Stderr, "testvm: unknown command %q\n%s", os.Args[1], usage)
		code = 2
	}
	os.Exit(code)
}

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, " ") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

type runOptions struct {
	vm      testvm.Options
	console string
	kit     string
	timeout time.Duration
}

func parseRun(args []string, stderr io.Writer) (runOptions, error) {
	var o runOptions
	var drives, monitors stringList
	fs := flag.NewFlagSet("testvm run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, usage); fs.PrintDefaults() }
	fs.Var(&drives, "drive", "a disk: PATH[,werror=stop|enospc|report|ignore][,aio=native|threads|io_uring][,cache=C][,format=qcow2|raw][,offset=BYTES][,shared] (repeatable: /dev/vda, /dev/vdb... in the guest)")
	fs.IntVar(&o.vm.DataMiB, "data-mib", 16, "MiB the guest writes to each drive and reads back")
	fs.Var(&monitors, "qmp", "a QMP socket of the VM for others, e.g. the agent that resumes it (repeatable)")
	fs.StringVar(&o.console, "console", "", "write the guest's console and QEMU's messages to this file")
	fs.StringVar(&o.kit, "kit", "", "the kit's directory (testvm kit --copy DIR); default: build it in the module's cache")
	fs.StringVar(&o.vm.Machine, "machine", testvm.Q35, "the machine type: "+testvm.Q35+" or "+testvm.MicroVM+" (no PCI, no SeaBIOS: boots faster in a VM under TCG)")
	fs.DurationVar(&o.timeout, "timeout", 30*time.Minute, "kill the VM if it has not powered off after this long, paused or not")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if len(drives) == 0 {
		return o, errors.New("no --drive")
	}
	for _, spec := range drives {
		d, err := parseDrive(spec)
		if err != nil {
			return o, err
		}
		o.vm.Drives = append(o.vm.Drives, d)
	}
	if o.vm.DataMiB <= 0 {
		return o, fmt.Errorf("--data-mib %d: not positive", o.vm.DataMiB)
	}
	if o.timeout <= 0 {
		return o, fmt.Errorf("--timeout %v: not positive", o.timeout)
	}
	if o.vm.Machine != testvm.Q35 && o.vm.Machine != testvm.MicroVM {
		return o, fmt.Errorf("--machine %q: %s or %s", o.vm.Machine, testvm.Q35, testvm.MicroVM)
	}
	o.vm.QMP = monitors
	o.vm.Monitors = 1 // run's own, for the events
	return o, nil
}

// parseDrive reads PATH[,key=value...][,shared]. A path with a comma cannot
// be given this way.
func parseDrive(spec string) (testvm.Drive, error) {
	fields := strings.Split(spec, ",")
	d := testvm.Drive{Path: fields[0]}
	if d.Path == "" {
		return d, fmt.Errorf("--drive %q: no path", spec)
	}
	seen := map[string]bool{}
	for _, f := range fields[1:] {
		key, value, hasValue := strings.Cut(f, "=")
		if seen[key] {
			return d, fmt.Errorf("--drive %q: %s twice", spec, key)
		}
		seen[key] = true
		var allowed []string
		switch key {
		case "werror":
			d.Werror, allowed = value, []string{"stop", "enospc", "report", "ignore"}
		case "aio":
			d.AIO, allowed = value, []string{"native", "threads", "io_uring"}
		case "cache":
			d.Cache, allowed = value, []string{"none", "writeback", "writethrough", "directsync", "unsafe"}
		case "format":
			d.Format, allowed = value, []string{"qcow2", "raw"}
		case "offset":
			n, err := strconv.ParseInt(value, 10, 64)
			if err != nil || n < 0 || n%(1<<20) != 0 {
				return d, fmt.Errorf("--drive %q: offset %q: not a multiple of 1 MiB in bytes", spec, value)
			}
			d.Offset = n
			continue
		case "shared":
			if hasValue {
				return d, fmt.Errorf("--drive %q: shared takes no value", spec)
			}
			d.Shared = true
			continue
		default:
			return d, fmt.Errorf("--drive %q: unknown option %q (werror, aio, cache, format, offset, shared)", spec, key)
		}
		if !hasValue || !slices.Contains(allowed, value) {
			return d, fmt.Errorf("--drive %q: %s=%s: want one of %s", spec, key, value, strings.Join(allowed, ", "))
		}
	}
	return d, nil
}

func runMain(args []string) int {
	o, err := parseRun(args, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "testvm run: %v\n", err)
		return 2
	}
	if err := run(o); err != nil {
		fmt.Fprintf(os.Stderr, "testvm run: %v\n", err)
		return 1
	}
	return 0
}

func run(o runOptions) error {
	kit, err := loadKit(o.kit)
	if err != nil {
		return err
	}
	if o.console != "" {
		f, err := os.Create(o.console)
		if err != nil {
			return err
		}
		defer f.Close()
		o.vm.Console = f
	}
	// The writer's first line says the guest is up: the boot's time.
	up := make(chan struct{})
	lines := newLineWatcher("testvm: writing ", func() { close(up) })
	if o.vm.Console != nil {
		o.vm.Console = io.MultiWriter(o.vm.Console, lines)
	} else {
		o.vm.Console = lines
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()

	start := time.Now()
	vm, err := testvm.Boot(ctx, kit, o.vm)
	if err != nil {
		return err
	}
	defer vm.Close()
	fmt.Printf("testvm: booting %d drive(s), %d MiB each, QMP %s\n", len(o.vm.Drives), o.vm.DataMiB, strings.Join(o.vm.QMP, " "))
	own, err := qmp.Dial(ctx, vm.QMP(len(o.vm.QMP)))
	if err != nil {
		return err
	}
	defer own.Close()
	go printEvents(own)
	go func() {
		select {
		case <-up:
			fmt.Printf("testvm: the guest is up after %.1fs (uptime %s)\n", time.Since(start).Seconds(), uptime())
		case <-ctx.Done():
		}
	}()

	r, err := vm.Wait(ctx)
	for i, d := range r.Drives {
		switch {
		case d.Verified:
			fmt.Printf("testvm: drive %d %s verified %d bytes\n", i, d.Device, d.Bytes)
		case d.Error != "":
			fmt.Printf("testvm: drive %d %s failed: %s\n", i, d.Device, d.Error)
		default:
			fmt.Printf("testvm: drive %d: no report\n", i)
		}
	}
	if err != nil {
		return err
	}
	fmt.Printf("testvm: every drive verified; the VM ran %.1fs\n", time.Since(start).Seconds())
	return nil
}

func loadKit(dir string) (testvm.Kit, error) {
	if dir != "" {
		return testvm.LoadKit(dir)
	}
	return testvm.BuildKit(func(format string, args ...any) {
		fmt.Fprintf(os.Stderr, "testvm: "+format+"\n", args...)
	})
}

// printEvents prints the VM's pauses and resumes, with the time QEMU gave
// and the boot time clock's when they arrived, until the connection ends.
func printEvents(c *qmp.Conn) {
	for e := range c.Events() {
		what := e.Name
		switch e.Name {
		case qmp.EventBlockIOError:
			if b, err := e.BlockIOError(); err == nil {
				what += fmt.Sprintf(" %s %s nospace=%t action=%s", b.Device, b.Operation, b.NoSpace, b.Action)
			}
		case qmp.EventStop, qmp.EventResume:
		default:
			continue
		}
		at := e.Time
		if at.IsZero() {
			at = time.Now()
		}
		fmt.Printf("testvm: event %s at %.3f (uptime %s)\n", what, float64(at.UnixMicro())/1e6, uptime())
	}
}

// uptime reads the boot time clock, as /proc/uptime shows it, in seconds.
func uptime() string {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err != nil {
		return "?"
	}
	return fmt.Sprintf("%d.%03d", ts.Sec, ts.Nsec/1e6)
}

// lineWatcher calls found once, at the first console line that starts with prefix.
type lineWatcher struct {
	prefix string
	found  func()
	buf    []byte
	done   bool
}

func newLineWatcher(prefix string, found func()) *lineWatcher {
	return &lineWatcher{prefix: prefix, found: found}
}

func (w *lineWatcher) Write(b []byte) (int, error) {
	if w.done {
		return len(b), nil
	}
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		line := strings.Trim(string(w.buf[:i]), "\r")
		w.buf = w.buf[i+1:]
		if strings.HasPrefix(line, w.prefix) {
			w.done, w.buf = true, nil
			w.found()
			return len(b), nil
		}
	}
}

func kitMain(args []string) int {
	fs := flag.NewFlagSet("testvm kit", flag.ContinueOnError)
	copyTo := fs.String("copy", "", "copy the kit's files into this directory (for run --kit DIR)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	kit, err := loadKit("")
	if err == nil && *copyTo != "" {
		kit, err = copyKit(kit, *copyTo)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "testvm kit: %v\n", err)
		return 1
	}
	fmt.Printf("kernel %s\ninitramfs %s\n", kit.Kernel, kit.Initramfs)
	return 0
}

func copyKit(kit testvm.Kit, dir string) (testvm.Kit, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return testvm.Kit{}, err
	}
	to := kit.In(dir)
	for _, f := range [][2]string{{kit.Kernel, to.Kernel}, {kit.Initramfs, to.Initramfs}} {
		if err := copyFile(f[0], f[1]); err != nil {
			return testvm.Kit{}, err
		}
	}
	return to, nil
}

func copyFile(from, to string) error {
	src, err := os.Open(from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := os.Create(to)
	if err != nil {
		return err
	}
	if _, err := io.Copy(dst, src); err != nil {
		dst.Close()
		return err
	}
	return dst.Close()
}
