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
	cacheDir  string
}

func hostMain() int {
	var o options
	flag.BoolVar(&o.bench, "bench", false, "run the benchmarks too")
	flag.StringVar(&o.benchtime, "benchtime", "20x", "-test.benchtime for the benchmarks")
	flag.StringVar(&o.run, "run", "", "run only the tests matching this regexp (-test.run)")
	flag.DurationVar(&o.timeout, "timeout", 6*time.Minute, "hard limit for the whole run; the guest is killed after it")
	flag.BoolVar(&o.forceVM, "vm", false, "boot a guest even when this host has device-mapper")
	flag.IntVar(&o.disks, "disks", 2, "scratch disks for the guest (1 GiB sparse each, /dev/vda...)")
	flag.StringVar(&o.cacheDir, "cache", "", "cache for the kernel and initramfs (default .cache/vmtest in the module)")
	flag.Parse()

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
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

// runHost builds the tests and runs them in a guest or directly. The tally
// is nil when nothing ran.
func runHost(ctx context.Context, o options) (*tally, error) {
	moduleDir, modulePath, err := module()
	if err != nil {
		return nil, err
	}
	if o.cacheDir == "" {
		o.cacheDir = filepath.Join(moduleDir, ".cache", "vmtest")
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
		needed = append(needed, "qemu-system-x86_64", "apt-get", "apt-cache", "dpkg-deb", "depmod", "ldd", busyboxPath)
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

	k, err := ensureKernel(o.cacheDir)
	if err != nil {
		return nil, err
	}
	base, err := baseInitramfs(o.cacheDir, k)
	if err != nil {
		return nil, err
	}
	payload := filepath.Join(work, "payload.cpio")
	if err := payloadInitramfs(payload, filepath.Join(work, "init"), p, hostPaths); err != nil {
		return nil, err
	}
	initrd := filepath.Join(work, "initrd.cpio")
	if err := concatFiles(initrd, base, payload); err != nil {
		return nil, err
	}
	disks, err := scratchDisks(work, o.disks, 1<<30)
	if err != nil {
		return nil, err
	}
	progress("booting %s under TCG with %d test binaries", k.Release, len(p.Tests))
	err = vm{kernel: k.vmlinuz(), initrd: initrd, disks: disks, timeout: o.timeout}.boot(ctx, out)
	if err == nil && !t.done {
		err = errors.New("the guest stopped without reporting a result (a kernel panic or a crash of /init: see the console above)")
	}
	return t, err
}

// buildPlan compiles the test binaries, lvwatch and, for a guest, this
// program as its /init, and describes the run. hostPaths maps the guest's
// paths to the host files to copy there.
func buildPlan(moduleDir, modulePath, work string, pkgs []goPackage, o options, inGuest bool) (*plan, map[string]string, error) {
	binDir := filepath.Join(work, "bin")
	progress("building %d test binaries (-tags %s)", len(pkgs), buildTag)
	if err := goBuild(moduleDir, "build", "-o", filepath.Join(binDir, "lvwatch"), "./cmd/lvwatch"); err != nil {
		return nil, nil, err
	}
	if inGuest {
		if err := goBuild(moduleDir, "build", "-o", filepath.Join(work, "init"), "./tools/vmtest"); err != nil {
			return nil, nil, err
		}
	}
	nonce := make([]byte, 4)
	rand.Read(nonce)
	// The guest needs time to boot and to report a hung test before the hard limit.
	testTimeout := o.timeout - 40*time.Second
	p := &plan{Nonce: hex.EncodeToString(nonce), Timeout: testTimeout}
	// A hung binary panics with its goroutines' stacks before the plan kills it.
	args := []string{"-test.v", "-test.timeout=" + (testTimeout - 10*time.Second).String()}
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
		var disks []string
		for i := range o.disks {
			disks = append(disks, fmt.Sprintf("/dev/vd%c", 'a'+i))
		}
		p.Env = append(p.Env, "LVWATCH_SCRATCH_DISKS="+strings.Join(disks, " "))
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

// module returns the main module's directory and path.
func module() (dir, path string, err error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}} {{.Path}}").Output()
	if err != nil {
		return "", "", fmt.Errorf("go list -m: %w", err)
	}
	dir, path, _ = strings.Cut(strings.TrimSpace(string(out)), " ")
	return dir, path, nil
}

// progress reports what the harness is doing, on stderr, apart from the test output.
func progress(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "vmtest: "+format+"\n", args...)
}

// runQuiet runs a command in dir and returns its output in the error if it fails.
func runQuiet(dir, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}
