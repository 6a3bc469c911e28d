// Command vmtest runs the tests that need device-mapper: the packages' tests
// built with the "vmtest" tag. On a host without device-mapper it boots them
// in a QEMU guest (Debian's cloud kernel, its dm and loop modules, lvm2,
// dmsetup, busybox and scratch disks) and returns the guest's result; run as
// root on a kernel with device-mapper, it runs the same binaries directly.
//
// Each test binary runs with -test.v in its package's directory (testdata
// included) and this environment:
//
//	LVWATCH_REQUIRE_PRIVILEGED=1   skipping for want of root or a kernel feature fails
//	LVWATCH_BIN                    the lvwatch binary, built for the run
//	LVWATCH_SCRATCH_DISKS          in the guest: its empty scratch disks, space-separated
//
// It prints the test output as it comes and ends with "N passed, N failed".
// The kernel and the base initramfs are cached under .cache/vmtest.
//
// With -script FILE it runs no tests: it boots the same guest and runs FILE
// (with any arguments after the flags) with sh as root in /root, its output
// streamed as it comes, and exits with its exit code, or 125 when the guest
// crashed, timed out or could not run it (the reason on stderr). The guest
// then also has lvwatch, qemu-img and qemu-io on PATH, bpffs, tracefs,
// /dev/shm and /dev/pts mounted as on a booted system, and -disks scratch
// disks of -disk-size (default 4GiB, sparse files removed afterwards). No
// udev or mdev runs: device nodes come from devtmpfs, and every uevent
// reaches any NETLINK_KOBJECT_UEVENT listener.
//
// With -guests 2 it boots two such guests at once, both on the same scratch
// disk files (cache=none, QEMU's locking off, shared writes: each guest's
// writes reach the file and the other sees them; no network between them).
// Each runs FILE with LVWATCH_GUEST=1 or 2, its lines on stdout after "[1] "
// or "[2] ". When one script fails the other guest is stopped; the exit code
// is the first non-zero one in the order the guests stopped, else 0. The
// Makefile passes a scenario's "# vmtest: FLAGS" line to vmtest.
//
// With -qemu (and -script) the guest can run a VM of its own, under TCG:
// it also has qemu-system-x86_64 with its libraries, the firmware and TCG
// module internal/testvm's machines load, tools/testvm and the testvm kit in
// /vmtest/kit (LVWATCH_TESTVM_KIT), and 2048 MiB of memory.
//
// The same program is the guest's /init: run as PID 1 it runs the plan it
// finds in the initramfs and powers off.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/lvwatch/lvwatch/internal/dm"
	"github.com/lvwatch/lvwatch/internal/size"
	"github.com/lvwatch/lvwatch/internal/testvm"
	"github.com/lvwatch/lvwatch/internal/testvm/guest"
)

func main() {
	if os.Getpid() == 1 {
		guestMain()
		return
	}
	os.Exit(hostMain())
}

type options struct {
	bench     bool
	benchtime string
	run       string
	timeout   time.Duration
	forceVM   bool
	disks     int
	diskSize  uint64
	cacheDir  string
	script    string   // -script: a shell script to run in the guest instead of the tests
	guests    int      // -script: guests booted at once, sharing the scratch disks
	qemu      bool     // -script: QEMU, the testvm kit and tools/testvm in the guest, for a nested VM
	args      []string // its arguments, after the flags
}

// The defaults that differ between the two modes: the tests, and -script.
const (
	testTimeout     = 6 * time.Minute
	scriptTimeout   = 20 * time.Minute
	testDiskSize    = 1 << 30
	scriptDiskSize  = 4 << 30
	maxScratchDisks = 26 // /dev/vda to /dev/vdz
	maxGuests       = 2
)

func hostMain() int {
	o, err := parseArgs(os.Args[1:], os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmtest: %v\n", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if o.script != "" {
		return scriptMain(ctx, o)
	}
	start := time.Now()
	t, err := runHost(ctx, o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmtest: %v\n", err)
	}
	if t == nil {
		return 1
	}
	verdict, code := "ok", 0
	if err != nil || !t.ok() {
		verdict, code = "FAIL", 1
	}
	fmt.Printf("vmtest: %s in %.1fs\n", verdict, time.Since(start).Seconds())
	// The last line alone, in the form CI and people read at a glance.
	fmt.Printf("vmtest: %s\n", t.summary())
	return code
}

// parseArgs reads the command line. The time limit and the disks' size have
// one default for the tests and a larger one for -script.
func parseArgs(args []string, stderr io.Writer) (options, error) {
	var o options
	fs := flag.NewFlagSet("vmtest", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, "usage: go run ./tools/vmtest [-run REGEXP] [-bench [-benchtime N]] [flags]\n"+
			"       go run ./tools/vmtest -script FILE [-guests N] [-disks N] [-disk-size SIZE] [-timeout D] [ARG...]\n\n")
		fs.PrintDefaults()
	}
	diskSize, timeout := "", time.Duration(0)
	fs.BoolVar(&o.bench, "bench", false, "run the benchmarks too")
	fs.StringVar(&o.benchtime, "benchtime", "20x", "-test.benchtime for the benchmarks")
	fs.StringVar(&o.run, "run", "", "run only the tests matching this regexp (-test.run)")
	fs.DurationVar(&timeout, "timeout", 0, fmt.Sprintf("hard limit for the whole run; the guest is killed after it (default %v, %v with -script)", testTimeout, scriptTimeout))
	fs.BoolVar(&o.forceVM, "vm", false, "boot a guest even when this host has device-mapper (-script always does)")
	fs.IntVar(&o.disks, "disks", 2, "scratch disks for the guest (sparse files, /dev/vda...)")
	fs.StringVar(&diskSize, "disk-size", "", fmt.Sprintf("size of each scratch disk (default %s, %s with -script)", size.Format(testDiskSize), size.Format(scriptDiskSize)))
	fs.StringVar(&o.cacheDir, "cache", "", "cache for the kernel and initramfs (default .cache/vmtest in the module)")
	fs.StringVar(&o.script, "script", "", "boot the guest and run this shell script in it as root instead of the tests; exit with its exit code (125: the guest failed)")
	fs.BoolVar(&o.qemu, "qemu", false, fmt.Sprintf("with -script: put in the guest what a nested VM needs (QEMU, its firmware and TCG module, testvm and its kit in %s; LVWATCH_TESTVM_KIT names it) and give it %d MiB", guestKitDir, qemuGuestMemMiB))
	fs.IntVar(&o.guests, "guests", 1, fmt.Sprintf("with -script: boot this many guests at once (up to %d), all on the same scratch disks; each runs FILE with LVWATCH_GUEST=1, 2...", maxGuests))
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	o.args = fs.Args()

	if set["script"] && o.script == "" {
		return o, errors.New("-script: no file")
	}
	o.timeout, o.diskSize = testTimeout, testDiskSize
	if o.script != "" {
		for _, f := range []string{"run", "bench", "benchtime"} {
			if set[f] {
				return o, fmt.Errorf("-%s: -script runs no tests", f)
			}
		}
		o.timeout, o.diskSize = scriptTimeout, scriptDiskSize
	} else if len(o.args) > 0 {
		return o, fmt.Errorf("unexpected arguments %q (only -script takes arguments)", o.args)
	} else if set["guests"] {
		return o, errors.New("-guests: only with -script")
	} else if set["qemu"] {
		return o, errors.New("-qemu: only with -script")
	}
	if o.guests < 1 || o.guests > maxGuests {
		return o, fmt.Errorf("-guests %d: from 1 to %d", o.guests, maxGuests)
	}
	if set["timeout"] {
		o.timeout = timeout
		if o.timeout <= 0 {
			return o, fmt.Errorf("-timeout %v: not positive", o.timeout)
		}
	}
	if diskSize != "" {
		n, err := size.Parse(diskSize)
		if err != nil {
			return o, fmt.Errorf("-disk-size: %w", err)
		}
		if n == 0 || n%512 != 0 {
			return o, fmt.Errorf("-disk-size %s: not a positive multiple of 512 bytes", diskSize)
		}
		o.diskSize = n
	}
	if o.disks < 0 || o.disks > maxScratchDisks {
		return o, fmt.Errorf("-disks %d: from 0 to %d", o.disks, maxScratchDisks)
	}
	return o, nil
}

// guestLimit is how long the guest's own run may take within the host's
// limit: the guest needs time to boot and to report a hung run before the
// host kills it.
func guestLimit(timeout time.Duration) time.Duration {
	if timeout > 4*40*time.Second {
		return timeout - 40*time.Second
	}
	return timeout * 3 / 4
}

// runHost builds the tests and runs them in a guest or directly. The tally
// is nil when nothing ran.
func runHost(ctx context.Context, o options) (*tally, error) {
	moduleDir, modulePath, err := testvm.Module()
	if err != nil {
		return nil, err
	}
	if o.cacheDir == "" {
		o.cacheDir = testvm.CacheDir(moduleDir)
	}
	if err := os.MkdirAll(o.cacheDir, 0o755); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "vmtest-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)

	pkgs, err := taggedPackages(moduleDir)
	if err != nil {
		return nil, err
	}
	if len(pkgs) == 0 {
		return nil, fmt.Errorf("no package has tests with the %q build tag", buildTag)
	}
	// Only root opens the control node: others get the guest.
	inGuest := o.forceVM || !hostHasDeviceMapper()

	needed := []string{"lvm", "dmsetup"}
	if inGuest {
		needed = append(needed, vmHostTools...)
	}
	if err := ensureHostTools(moduleDir, needed); err != nil {
		return nil, err
	}
	p, hostPaths, err := buildPlan(moduleDir, modulePath, work, pkgs, o, inGuest)
	if err != nil {
		return nil, err
	}
	t := newTally(p.markerPrefix())
	out := io.MultiWriter(os.Stdout, t)
	if !inGuest {
		progress("this host has device-mapper: running %d test binaries directly", len(p.Tests))
		p.run(ctx, out)
		return t, nil
	}

	err = bootGuest(ctx, o, work, p, hostPaths, out, fmt.Sprintf("with %d test binaries", len(p.Tests)))
	if err == nil && !t.done {
		err = errors.New("the guest stopped without reporting a result (a kernel panic or a crash of /init: see the console above)")
	}
	return t, err
}

// bootGuest writes the guest's initramfs (the cached base archive, for a
// script the cached one of its extra programs, then the run's payload with
// the plan and the hostPaths), makes the scratch disks in work and boots the
// guest with its console on out. what ends the progress line.
func bootGuest(ctx context.Context, o options, work string, p *plan, hostPaths map[string]string, out io.Writer, what string) error {
	errs, err := bootGuests(ctx, o, work, []*plan{p}, hostPaths, []io.Writer{out}, nil, what)
	if err != nil {
		return err
	}
	return errs[0]
}

// bootGuests is bootGuest for one guest per plan, booted at once, the
// console of guest i on outs[i]. With more than one they share the scratch
// disks, opened with cache=none and shared writes. done, when not nil, is
// called with each guest's index and boot error as it stops; its false
// stops the guests still running. err is what kept the guests from booting.
func bootGuests(ctx context.Context, o options, work string, plans []*plan, hostPaths map[string]string, outs []io.Writer, done func(int, error) bool, what string) (errs []error, err error) {
	cache := testvm.Cache{Dir: o.cacheDir, Progress: progress}
	k, err := cache.Kernel()
	if err != nil {
		return nil, err
	}
	base, err := baseInitramfs(cache, k)
	if err != nil {
		return nil, err
	}
	archives := []string{base}
	if plans[0].Script != nil {
		tools, err := toolsInitramfs(cache)
		if err != nil {
			return nil, err
		}
		archives = append(archives, tools)
	}
	memMiB := guestMemMiB
	if o.qemu {
		nested, err := qemuInitramfs(cache)
		if err != nil {
			return nil, err
		}
		archives = append(archives, nested)
		memMiB = qemuGuestMemMiB
	}
	vms := make([]vm, len(plans))
	disks, err := scratchDisks(work, o.disks, int64(o.diskSize))
	if err != nil {
		return nil, err
	}
	for i, p := range plans {
		name := ""
		if len(plans) > 1 {
			name = fmt.Sprint(i + 1)
		}
		payload := filepath.Join(work, "payload"+name+".cpio")
		if err := payloadInitramfs(payload, filepath.Join(work, "init"), p, hostPaths); err != nil {
			return nil, err
		}
		initrd := filepath.Join(work, "initrd"+name+".cpio")
		if err := concatFiles(initrd, append(archives, payload)...); err != nil {
			return nil, err
		}
		vms[i] = vm{kernel: k.Vmlinuz(), initrd: initrd, disks: disks, timeout: o.timeout, shared: len(plans) > 1, memMiB: memMiB}
	}
	if len(plans) > 1 {
		what = fmt.Sprintf("%d guests %s", len(plans), what)
	}
	progress("booting %s under TCG %s", k.Release, what)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type stopped struct {
		i   int
		err error
	}
	ch := make(chan stopped)
	for i, v := range vms {
		go func() { ch <- stopped{i, v.boot(ctx, outs[i])} }()
	}
	errs = make([]error, len(vms))
	for range vms {
		s := <-ch
		errs[s.i] = s.err
		if done != nil && !done(s.i, s.err) {
			cancel()
		}
	}
	return errs, nil
}

// buildPlan compiles the test binaries, lvwatch and, for a guest, this
// program as its /init, and describes the run. hostPaths maps the guest's
// paths to the host files to copy there.
func buildPlan(moduleDir, modulePath, work string, pkgs []goPackage, o options, inGuest bool) (*plan, map[string]string, error) {
	binDir := filepath.Join(work, "bin")
	progress("building %d test binaries (-tags %s)", len(pkgs), buildTag)
	if err := testvm.GoStatic(moduleDir, "build", "-o", filepath.Join(binDir, "lvwatch"), "./cmd/lvwatch"); err != nil {
		return nil, nil, err
	}
	if inGuest {
		if err := testvm.GoStatic(moduleDir, "build", "-o", filepath.Join(work, "init"), "./tools/vmtest"); err != nil {
			return nil, nil, err
		}
	}
	nonce := make([]byte, 4)
	rand.Read(nonce)
	limit := guestLimit(o.timeout)
	p := &plan{Nonce: hex.EncodeToString(nonce), Timeout: limit}
	// A hung binary panics with its goroutines' stacks before the plan kills it.
	args := []string{"-test.v", "-test.timeout=" + (limit - min(10*time.Second, limit/8)).String()}
	if o.run != "" {
		args = append(args, "-test.run="+o.run)
	}
	if o.bench {
		args = append(args, "-test.bench=.", "-test.benchtime="+o.benchtime)
	}

	hostPaths := map[string]string{}
	guestBin := func(name string) string { return filepath.Join(binDir, name) }
	if inGuest {
		guestBin = func(name string) string {
			hostPaths[filepath.Join(guestBinDir, name)] = filepath.Join(binDir, name)
			return filepath.Join(guestBinDir, name)
		}
		p.Modules = guestModules
		p.Env = append(p.Env, "LVWATCH_SCRATCH_DISKS="+strings.Join(guestDiskNames(o.disks), " "))
	}
	p.Env = append(p.Env, "LVWATCH_REQUIRE_PRIVILEGED=1", "LVWATCH_BIN="+guestBin("lvwatch"))
	for _, pkg := range pkgs {
		name := binaryName(modulePath, pkg.ImportPath)
		if err := buildTestBinary(moduleDir, pkg.ImportPath, filepath.Join(binDir, name)); err != nil {
			return nil, nil, err
		}
		dir := pkg.Dir
		if inGuest {
			rel, _ := filepath.Rel(moduleDir, pkg.Dir)
			dir = filepath.Join(guestPkgDir, rel)
			hostPaths[dir] = emptyDir(work)
			if _, err := os.Stat(filepath.Join(pkg.Dir, "testdata")); err == nil {
				hostPaths[filepath.Join(dir, "testdata")] = filepath.Join(pkg.Dir, "testdata")
			}
		}
		p.Tests = append(p.Tests, testBinary{Package: pkg.ImportPath, Binary: guestBin(name), Dir: dir, Args: args})
	}
	return p, hostPaths, nil
}

// vmHostTools are the host programs a guest boot needs: QEMU, what fetches
// and unpacks the kernel, ldd and busybox for the initramfs.
var vmHostTools = []string{"qemu-system-x86_64", "apt-get", "apt-cache", "dpkg-deb", "depmod", "ldd", guest.Busybox}

// guestDiskNames are the scratch disks' device nodes in the guest: its only
// virtio disks, in the order of QEMU's -drive options.
func guestDiskNames(n int) []string {
	var disks []string
	for i := range n {
		disks = append(disks, fmt.Sprintf("/dev/vd%c", 'a'+i))
	}
	return disks
}

// ensureHostTools runs tools/deps.sh, the project's one list of Debian
// packages, when a program the run needs is missing.
func ensureHostTools(moduleDir string, programs []string) error {
	var missing []string
	for _, p := range programs {
		if _, err := exec.LookPath(p); err != nil {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	progress("missing %s: running tools/deps.sh", strings.Join(missing, ", "))
	cmd := exec.Command(filepath.Join(moduleDir, "tools", "deps.sh"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("tools/deps.sh: %w", err)
	}
	for _, p := range missing {
		if _, err := exec.LookPath(p); err != nil {
			return fmt.Errorf("%s still missing after tools/deps.sh: %w", p, err)
		}
	}
	return nil
}

// hostHasDeviceMapper tells whether this kernel has device-mapper: the control
// node may exist (lvm2's packaging creates it) without a driver behind it.
func hostHasDeviceMapper() bool {
	f, err := os.OpenFile(dm.ControlPath, os.O_RDWR, 0)
	if err != nil {
		return false
	}
	f.Close()
	return true
}

// emptyDir is an empty directory to copy as a package's working directory in the guest.
func emptyDir(work string) string {
	d := filepath.Join(work, "empty")
	os.MkdirAll(d, 0o755)
	return d
}

// progress reports what the harness is doing, on stderr, apart from the test output.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "vmtest: "+format+"\n", args...)
}
