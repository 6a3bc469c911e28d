package watch

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/lvwatch/lvwatch/internal/loopdev"
	"github.com/lvwatch/lvwatch/internal/testutil"
	"golang.org/x/sys/unix"
)

// requireBPF skips (or fails under LVWATCH_REQUIRE_PRIVILEGED=1) where the watcher
// cannot load: not root, or a kernel without tracepoint programs or ring buffers.
func requireBPF(t testing.TB) {
	t.Helper()
	testutil.RequireRoot(t)
	if err := features.HaveProgramType(ebpf.TracePoint); err != nil {
		testutil.SkipOrFail(t, "tracepoint programs: "+err.Error())
	}
	if err := features.HaveMapType(ebpf.RingBuf); err != nil {
		testutil.SkipOrFail(t, "BPF ring buffers: "+err.Error())
	}
}

// requireProbe skips (or fails) where probe cannot run: the BTF one needs the
// kernel's BTF.
func requireProbe(t testing.TB, probe Probe) {
	t.Helper()
	requireBPF(t)
	if probe == ProbeBTF {
		testutil.RequireFile(t, "/sys/kernel/btf/vmlinux", "kernel BTF")
	}
}

// probes are the two ways of attaching, each forced.
var probes = []Probe{ProbeBTF, ProbeTracepoint}

// eachProbe runs test once per probe, as a subtest named after it.
func eachProbe(t *testing.T, test func(t *testing.T, probe Probe)) {
	for _, probe := range probes {
		t.Run(string(probe), func(t *testing.T) {
			requireProbe(t, probe)
			test(t, probe)
		})
	}
}

// testPinDir is a pin directory of the test's own, so tests never touch a running agent's.
func testPinDir(t testing.TB) string {
	sweepTestPins.Do(removeDeadTestPins)
	name := strings.NewReplacer("/", "-", " ", "-").Replace(t.Name())
	return filepath.Join(bpfFSPath, fmt.Sprintf("lvwatch-test-%d-%s", os.Getpid(), name))
}

var sweepTestPins sync.Once

// removeDeadTestPins removes the pin directories of test processes that were
// killed before their cleanup: their program would stay attached, and every
// bio on the machine would pay for it.
func removeDeadTestPins() {
	dirs, _ := filepath.Glob(filepath.Join(bpfFSPath, "lvwatch-test-*"))
	for _, dir := range dirs {
		var pid int
		if _, err := fmt.Sscanf(filepath.Base(dir), "lvwatch-test-%d-", &pid); err != nil || pid == os.Getpid() {
			continue
		}
		if err := unix.Kill(pid, 0); errors.Is(err, unix.ESRCH) {
			os.RemoveAll(dir)
		}
	}
}

// mustOpen opens a watcher with opts, for tests that close and open it again.
func mustOpen(t testing.TB, opts Options) *Watcher {
	t.Helper()
	w, err := Open(opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return w
}

// openWatcher opens a watcher attached by probe on a fresh pin directory and
// removes it at cleanup.
func openWatcher(t testing.TB, probe Probe) *Watcher {
	t.Helper()
	requireProbe(t, probe)
	// Named after the probe too: a test may open one watcher of each.
	w := mustOpen(t, Options{PinDir: testPinDir(t) + "-" + cmp.Or(string(probe), "auto"), Probe: probe})
	if probe != ProbeAuto && w.Probe() != probe {
		t.Fatalf("watcher attached by %s, want %s", w.Probe(), probe)
	}
	t.Cleanup(func() {
		if err := w.CloseAndUnpin(); err != nil {
			t.Errorf("CloseAndUnpin: %v", err)
		}
	})
	return w
}

// mustArm arms dev and returns the cookie, failing the test on an error or when
// writes were already past the threshold.
func mustArm(t testing.TB, w *Watcher, dev Dev, threshold uint64) uint64 {
	t.Helper()
	a, err := w.Arm(dev, threshold)
	if err != nil {
		t.Fatalf("Arm(%s, %d): %v", dev, threshold, err)
	}
	if a.Past {
		t.Fatalf("Arm(%s, %d): already past (high %d)", dev, threshold, a.High)
	}
	return a.Cookie
}

// pending returns every event already in the ring without waiting for more.
func pending(t testing.TB, w *Watcher) []Event {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var evs []Event
	for {
		ev, err := w.Read(ctx)
		if errors.Is(err, context.Canceled) {
			return evs
		}
		if err != nil {
			t.Fatalf("Read: %v", err)
		}
		evs = append(evs, ev)
	}
}

// wantEvents checks that exactly n events are pending and returns them.
func wantEvents(t testing.TB, w *Watcher, n int, what string) []Event {
	t.Helper()
	evs := pending(t, w)
	if len(evs) != n {
		t.Fatalf("%s: got %d events, want %d: %+v", what, len(evs), n, evs)
	}
	return evs
}

// blockDev is a loop device opened for O_DIRECT I/O.
type blockDev struct {
	*loopdev.Device
	Dev        Dev
	fd         int
	reattached bool
}

// reattach detaches d and attaches backing to the same device number, which
// makes it a new disk with a new diskseq. It reports false if another process
// took the number in between; d is then unusable.
func (d *blockDev) reattach(t testing.TB, backing string) bool {
	t.Helper()
	path := d.Path
	unix.Close(d.fd)
	d.fd = -1
	if err := d.Device.Close(); err != nil {
		t.Fatal(err)
	}
	d.Device = &loopdev.Device{Path: path} // for its path only: detached below
	d.reattached = true
	if out, err := exec.Command("losetup", path, backing).CombinedOutput(); err != nil {
		t.Logf("losetup %s %s: %v: %s", path, backing, err, out)
		return false
	}
	t.Cleanup(func() { exec.Command("losetup", "-d", path).Run() })
	return true
}

// partitionedLoop is a loop device with a partition table, scanned by the kernel.
type partitionedLoop struct {
	Path string // /dev/loopN; the partition is Path+"p1"
	Dev  Dev
}

// newPartitionedLoop attaches a sparse file of size bytes with one partition of
// n sectors from sector start, added by BLKPG (addpart): this kernel may have no
// partition table parsers.
func newPartitionedLoop(t testing.TB, size int64, start, n uint64) partitionedLoop {
	t.Helper()
	testutil.RequireFile(t, "/dev/loop-control", "loop devices")
	backing := filepath.Join(t.TempDir(), "disk.img")
	if err := os.WriteFile(backing, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(backing, size); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("losetup", "--partscan", "--find", "--show", backing).Output()
	if err != nil {
		t.Fatalf("losetup --partscan: %v", err)
	}
	path := strings.TrimSpace(string(out))
	t.Cleanup(func() { exec.Command("losetup", "-d", path).Run() })
	if out, err := exec.Command("addpart", path, "1", fmt.Sprint(start), fmt.Sprint(n)).CombinedOutput(); err != nil {
		t.Fatalf("addpart %s: %v: %s", path, err, out)
	}
	dev, err := DevOf(path)
	if err != nil {
		t.Fatal(err)
	}
	return partitionedLoop{Path: path, Dev: dev}
}

// newBlockDev attaches a sparse file in dir ("" for the default temporary directory).
func newBlockDev(t testing.TB, dir string, size int64) *blockDev {
	t.Helper()
	testutil.RequireFile(t, "/dev/loop-control", "loop devices")
	ld, err := loopdev.NewSparse(dir, size)
	if err != nil {
		t.Fatal(err)
	}
	fd, err := unix.Open(ld.Path, unix.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
	if err != nil {
		ld.Close()
		t.Fatalf("open %s O_DIRECT: %v", ld.Path, err)
	}
	d := &blockDev{Device: ld, Dev: Dev{ld.Major, ld.Minor}, fd: fd}
	t.Cleanup(func() {
		if d.reattached {
			return // its own cleanup detaches it
		}
		unix.Close(d.fd)
		if err := d.Close(); err != nil {
			t.Error(err)
		}
	})
	return d
}

// alignedBuf returns n bytes aligned for O_DIRECT.
func alignedBuf(n int) []byte {
	b := make([]byte, n+4096)
	off := 4096 - int(uintptr(ptrOf(b))%4096)
	return b[off : off+n]
}

func (d *blockDev) write(t testing.TB, buf []byte, offset int64) {
	t.Helper()
	if n, err := unix.Pwrite(d.fd, buf, offset); err != nil || n != len(buf) {
		t.Fatalf("pwrite %s at %d: %d, %v", d.Path, offset, n, err)
	}
}

func (d *blockDev) read(t testing.TB, buf []byte, offset int64) {
	t.Helper()
	if n, err := unix.Pread(d.fd, buf, offset); err != nil || n != len(buf) {
		t.Fatalf("pread %s at %d: %d, %v", d.Path, offset, n, err)
	}
}

// rangeIoctl issues BLKDISCARD or BLKZEROOUT for [offset, offset+length).
func (d *blockDev) rangeIoctl(t testing.TB, req uint, offset, length uint64) {
	t.Helper()
	r := [2]uint64{offset, length}
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(d.fd), uintptr(req), uintptr(ptrOf(r[:]))); errno != 0 {
		t.Fatalf("ioctl %#x on %s: %v", req, d.Path, errno)
	}
}

// loadTestProgram loads a BPF_PROG_TEST_RUN twin of the watcher's programs
// (lvw_test_rec or lvw_test_bio) on w's maps.
func loadTestProgram(t testing.TB, w *Watcher, name string) *ebpf.Program {
	t.Helper()
	spec, err := loadBpf()
	if err != nil {
		t.Fatal(err)
	}
	prog, err := loadProgram(spec, name, w.objs.byName())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}

func ptrOf[T any](s []T) unsafe.Pointer { return unsafe.Pointer(unsafe.SliceData(s)) }
