//go:build vmtest

package refresh_test

import (
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/lvwatch/lvwatch/internal/dm"
	"github.com/lvwatch/lvwatch/internal/dm/dmtest"
	"github.com/lvwatch/lvwatch/internal/lvm"
	"github.com/lvwatch/lvwatch/internal/lvm/lvmtest"
	"github.com/lvwatch/lvwatch/internal/refresh"
	"github.com/lvwatch/lvwatch/internal/testutil"
)

// activation turns on what lvmtest's configuration turns off: these tests
// need LVs active in device-mapper, as on the host that runs the VM.
var activation = []string{"--config", "global/activation=1"}

// fixture is a VG on two loop devices whose LVs this host has active.
type fixture struct {
	env *lvmtest.Env
	vg  string
	ctl *dm.Control
}

var vgSeq atomic.Int32

func newFixture(t testing.TB) *fixture {
	t.Helper()
	ctl := dmtest.Control(t)
	env := lvmtest.New(t, 2, 512<<20)
	f := &fixture{env: env, vg: fmt.Sprintf("lvwatch_refresh_%d_%d", os.Getpid(), vgSeq.Add(1)), ctl: ctl}
	env.CreateVG(f.vg, env.Paths(), nil, []string{"--physicalextentsize", "1m"})
	// The refresher and lvwatch take the lvm configuration of the test's lvm:
	// its lock directory, and its filter for a scan.
	t.Setenv("LVM_SYSTEM_DIR", env.Dir)
	// Runs before lvmtest's own cleanup removes the VG and the loop devices.
	t.Cleanup(func() {
		if _, err := env.Run(append([]string{"vgchange", "-an"}, append(activation, f.vg)...)...); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	return f
}

// refresher is a Refresher on this host's device-mapper, with its records
// in a directory of the test's own unless opts names one.
func (f *fixture) refresher(t testing.TB, opts refresh.Options) *refresh.Refresher {
	t.Helper()
	if opts.StateDir == "" {
		opts.StateDir = t.TempDir()
	}
	r, err := refresh.New(refresh.Kernel(f.ctl), opts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// lvm runs an lvm command that activates or refreshes LVs.
func (f *fixture) lvm(t testing.TB, cmd string, args ...string) {
	t.Helper()
	f.env.MustRun(append(append([]string{cmd}, activation...), args...)...)
}

// createLV makes an active linear LV; extra goes to lvcreate (e.g. stripes).
func (f *fixture) createLV(t testing.TB, lv, size string, extra ...string) {
	t.Helper()
	f.lvm(t, "lvcreate", append([]string{"-q", "-n", lv, "-L", size, "-Wn", "-Zn"}, append(extra, f.vg)...)...)
}

// resizeMetadataOnly changes the LV in the metadata only, as the SPM on another host does.
func (f *fixture) resizeMetadataOnly(t testing.TB, cmd, lv, size string) {
	t.Helper()
	f.env.MustRun(cmd, "-q", "-f", "--driverloaded", "n", "-L", size, f.vg+"/"+lv)
}

func (f *fixture) dmName(lv string) string { return lvm.DMName(f.vg, lv) }

// device is the LV's node as lvm made it.
func (f *fixture) device(lv string) string { return "/dev/mapper/" + f.dmName(lv) }

// dmsetupTable is the LV's live table as `dmsetup table` prints it.
func (f *fixture) dmsetupTable(t testing.TB, lv string) string {
	t.Helper()
	out, err := exec.Command("dmsetup", "table", f.dmName(lv)).CombinedOutput()
	if err != nil {
		t.Fatalf("dmsetup table %s: %v\n%s", f.dmName(lv), err, out)
	}
	return string(out)
}

// lvwatchBin is the lvwatch binary the harness built.
func lvwatchBin(t testing.TB) string {
	t.Helper()
	bin := os.Getenv("LVWATCH_BIN")
	if bin == "" {
		testutil.SkipOrFail(t, "LVWATCH_BIN is not set: run through tools/vmtest (make vmtest)")
	}
	return bin
}

const blockSizeIO = 4096

// alignedBlock is a page-aligned buffer, as O_DIRECT needs.
func alignedBlock(t testing.TB) []byte {
	t.Helper()
	b, err := unix.Mmap(-1, 0, blockSizeIO, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { unix.Munmap(b) })
	return b
}

// stamp fills a block with its number and a sequence number, so that a read
// shows which write it holds.
func stamp(b []byte, block, seq uint64) {
	for i := 0; i+16 <= len(b); i += 16 {
		binary.LittleEndian.PutUint64(b[i:], block)
		binary.LittleEndian.PutUint64(b[i+8:], seq)
	}
}

// writer keeps writing blocks with O_DIRECT over the start of a device, as a
// VM does, and remembers the last write of each block.
type writer struct {
	f      *os.File
	last   []uint64 // sequence number of the last write of each block, 0 for none
	stop   chan struct{}
	done   chan error
	writes int
}

func startWriter(t testing.TB, path string, blocks int) *writer {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	w := &writer{f: f, last: make([]uint64, blocks), stop: make(chan struct{}), done: make(chan error, 1)}
	buf := alignedBlock(t)
	go func() {
		for seq := uint64(1); ; seq++ {
			select {
			case <-w.stop:
				w.done <- nil
				return
			default:
			}
			block := (seq * 7919) % uint64(blocks) // a stride that visits every block
			stamp(buf, block, seq)
			if _, err := f.WriteAt(buf, int64(block)*blockSizeIO); err != nil {
				w.done <- fmt.Errorf("write %d of block %d: %w", seq, block, err)
				return
			}
			w.last[block] = seq
			w.writes++
		}
	}()
	return w
}

// stopAndVerify stops the writer and reads every block back: each must hold its last write.
func (w *writer) stopAndVerify(t testing.TB) {
	t.Helper()
	close(w.stop)
	if err := <-w.done; err != nil {
		t.Fatal(err)
	}
	buf := alignedBlock(t)
	want := make([]byte, blockSizeIO)
	for block, seq := range w.last {
		if seq == 0 {
			continue
		}
		if _, err := w.f.ReadAt(buf, int64(block)*blockSizeIO); err != nil {
			t.Fatalf("read block %d: %v", block, err)
		}
		stamp(want, uint64(block), seq)
		if string(buf) != string(want) {
			t.Fatalf("block %d does not hold write %d (holds block %d write %d)", block, seq,
				binary.LittleEndian.Uint64(buf), binary.LittleEndian.Uint64(buf[8:]))
		}
	}
	t.Logf("%d O_DIRECT writes during the test, all read back", w.writes)
}

// writeAtEnd writes the device's last block with O_DIRECT and reads it back.
func writeAtEnd(t testing.TB, path string) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	size := dmtest.BlockSize(t, path)
	buf, back := alignedBlock(t), alignedBlock(t)
	last := size/blockSizeIO - 1
	stamp(buf, last, 42)
	if _, err := f.WriteAt(buf, int64(last*blockSizeIO)); err != nil {
		t.Fatalf("write the last block of %s: %v", path, err)
	}
	if _, err := f.ReadAt(back, int64(last*blockSizeIO)); err != nil || string(back) != string(buf) {
		t.Fatalf("read the last block of %s back: %v", path, err)
	}
}

// run runs a command and returns its stdout, failing the test on error.
func run(t testing.TB, name string, args ...string) string {
	t.Helper()
	cmd := exec.Command(name, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s%s", name, strings.Join(args, " "), err, out, stderr.String())
	}
	return string(out)
}
