//go:build vmtest

package refresh_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lvwatch/lvwatch/internal/dm"
	"github.com/lvwatch/lvwatch/internal/dm/dmtest"
	"github.com/lvwatch/lvwatch/internal/latency"
	"github.com/lvwatch/lvwatch/internal/refresh"
)

// TestCLIAfterExtendByAnotherHost is the SPM scenario: an active LV is
// extended in the metadata only (as the SPM on another host does) while a VM
// writes to it, then `lvwatch refresh` makes this host see the new size; the
// table must be the one `lvchange --refresh` would load.
func TestCLIAfterExtendByAnotherHost(t *testing.T) {
	f := newFixture(t)
	bin := lvwatchBin(t)
	f.createLV(t, "disk", "64m")
	// A second LV right after the first, so that the extension is a new segment.
	f.createLV(t, "other", "32m")
	w := startWriter(t, f.device("disk"), 4096)

	f.resizeMetadataOnly(t, "lvextend", "disk", "+64m")
	if n := dmtest.BlockSize(t, f.device("disk")); n != 64<<20 {
		t.Fatalf("before the refresh the LV is %d bytes, want the old 64 MiB", n)
	}
	out := run(t, bin, "refresh", "--scan", f.vg+"/disk")
	t.Logf("lvwatch refresh: %s", out)
	if !strings.Contains(out, "64MiB -> 128MiB") {
		t.Errorf("lvwatch refresh printed %q, want the old and new sizes", out)
	}
	w.stopAndVerify(t)

	ours := f.dmsetupTable(t, "disk")
	if n := dmtest.BlockSize(t, f.device("disk")); n != 128<<20 {
		t.Errorf("after the refresh the LV is %d bytes, want 128 MiB", n)
	}
	writeAtEnd(t, f.device("disk"))
	if strings.Count(ours, "\n") != 2 {
		t.Errorf("table %q: want two segments", ours)
	}

	f.lvm(t, "lvchange", "--refresh", f.vg+"/disk")
	if lvms := f.dmsetupTable(t, "disk"); lvms != ours {
		t.Errorf("lvwatch loaded\n%s\nlvchange --refresh loads\n%s", ours, lvms)
	}
	if out := run(t, bin, "refresh", "--scan", f.vg+"/disk"); !strings.Contains(out, "unchanged") {
		t.Errorf("second refresh printed %q, want no change", out)
	}
}

// TestStripedMatchesLvchange checks the striped table against lvm's own.
func TestStripedMatchesLvchange(t *testing.T) {
	f := newFixture(t)
	f.createLV(t, "striped", "32m", "--stripes", "2", "--stripesize", "64k")
	f.resizeMetadataOnly(t, "lvextend", "striped", "+32m")
	res, err := f.refresher(t, refresh.Options{Scan: true}).Refresh(t.Context(), f.vg, "striped", nil)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Changed || res.OldSize != 32<<20 || res.NewSize != 64<<20 {
		t.Errorf("result %+v, want 32 MiB -> 64 MiB", res)
	}
	ours := f.dmsetupTable(t, "striped")
	f.lvm(t, "lvchange", "--refresh", f.vg+"/striped")
	if lvms := f.dmsetupTable(t, "striped"); lvms != ours {
		t.Errorf("lvwatch loaded\n%s\nlvchange --refresh loads\n%s", ours, lvms)
	}
}

// TestRefreshUnderIO swaps tables again and again while a writer runs.
func TestRefreshUnderIO(t *testing.T) {
	f := newFixture(t)
	f.createLV(t, "disk", "16m")
	r := f.refresher(t, refresh.Options{})
	w := startWriter(t, f.device("disk"), 4096)
	devices := f.env.Paths()
	for i := range 5 {
		f.resizeMetadataOnly(t, "lvextend", "disk", "+8m")
		res, err := r.Refresh(t.Context(), f.vg, "disk", devices)
		if err != nil {
			t.Fatal(err)
		}
		if want := uint64(16+8*(i+1)) << 20; !res.Changed || res.NewSize != want {
			t.Fatalf("refresh %d: %+v, want a swap to %d bytes", i, res, want)
		}
		t.Logf("refresh %d: %v -> %v in %v (metadata %v, swap %v)", i, res.OldSize, res.NewSize, res.Total, res.Metadata, res.Swap)
	}
	w.stopAndVerify(t)
	writeAtEnd(t, f.device("disk"))
}

func TestRefreshUnchanged(t *testing.T) {
	f := newFixture(t)
	f.createLV(t, "disk", "16m")
	_, before, err := f.ctl.Table(dm.ByName(f.dmName("disk")))
	if err != nil {
		t.Fatal(err)
	}
	res, err := f.refresher(t, refresh.Options{}).Refresh(t.Context(), f.vg, "disk", f.env.Paths())
	if err != nil {
		t.Fatal(err)
	}
	if res.Changed || res.OldSize != res.NewSize || res.NewSize != 16<<20 {
		t.Errorf("result %+v, want no change at 16 MiB", res)
	}
	info, after, err := f.ctl.Table(dm.ByName(f.dmName("disk")))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(before, after) || info.HasInactiveTable() {
		t.Errorf("table changed from %+v to %+v (%+v)", before, after, info)
	}
}

func TestRefreshRefusesShrink(t *testing.T) {
	f := newFixture(t)
	f.createLV(t, "disk", "32m")
	f.resizeMetadataOnly(t, "lvreduce", "disk", "16m")
	_, err := f.refresher(t, refresh.Options{}).Refresh(t.Context(), f.vg, "disk", f.env.Paths())
	if !errors.Is(err, refresh.ErrShrink) {
		t.Fatalf("refresh of a shrunk LV: %v, want ErrShrink", err)
	}
	info, table, err := f.ctl.Table(dm.ByName(f.dmName("disk")))
	if err != nil {
		t.Fatal(err)
	}
	if dm.TableSectors(table) != 32<<11 || info.Suspended() || info.HasInactiveTable() {
		t.Errorf("after a refused shrink: %+v, %+v; want the 32 MiB table live and running", info, table)
	}
}

// TestRefreshRefusesRemap: metadata that grows the LV but also moves sectors
// it already maps is not an extension and must not go live.
func TestRefreshRefusesRemap(t *testing.T) {
	f := newFixture(t)
	f.createLV(t, "disk", "16m")
	f.resizeMetadataOnly(t, "lvreduce", "disk", "8m")
	// The sectors 8m-16m of the live LV now come from the other PV.
	f.env.MustRun("lvextend", "-q", "--driverloaded", "n", "-L", "24m", f.vg+"/disk", f.env.Paths()[1])
	_, err := f.refresher(t, refresh.Options{}).Refresh(t.Context(), f.vg, "disk", f.env.Paths())
	if !errors.Is(err, refresh.ErrRemap) {
		t.Fatalf("refresh of a remapped LV: %v, want ErrRemap", err)
	}
	t.Log(err)
	info, table, err := f.ctl.Table(dm.ByName(f.dmName("disk")))
	if err != nil {
		t.Fatal(err)
	}
	if dm.TableSectors(table) != 16<<11 || info.Suspended() || info.HasInactiveTable() {
		t.Errorf("after a refused remap: %+v, %+v; want the 16 MiB table live and running", info, table)
	}
}

// TestRefreshLeavesPendingTable: a table another process (lvm, between its
// load and its resume) has put in the inactive slot must be neither replaced
// nor cleared, or that process's resume would put our table live, not its own.
func TestRefreshLeavesPendingTable(t *testing.T) {
	f := newFixture(t)
	f.createLV(t, "disk", "16m")
	f.resizeMetadataOnly(t, "lvextend", "disk", "+16m")
	id := dm.ByName(f.dmName("disk"))
	_, live, err := f.ctl.Table(id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.ctl.Load(id, live); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.ctl.ClearInactive(id) })
	_, err = f.refresher(t, refresh.Options{}).Refresh(t.Context(), f.vg, "disk", f.env.Paths())
	if !errors.Is(err, refresh.ErrSuspended) {
		t.Errorf("refresh with another table pending: %v, want ErrSuspended", err)
	}
	info, table, err := f.ctl.Table(id)
	if err != nil {
		t.Fatal(err)
	}
	if dm.TableSectors(table) != 16<<11 || info.Suspended() || !info.HasInactiveTable() {
		t.Errorf("after the refresh: %+v, %+v; want the 16 MiB table live and the other table still pending", info, table)
	}
}

// TestRefreshKeepsReadOnly: an LV active read-only must stay read-only after
// its table is swapped, whether lvm made it so from its metadata (lvchange
// -p r, as for a template's base image) or only its device is (activated
// read-only): a table loaded without the read-only flag makes the kernel turn
// the device writable.
func TestRefreshKeepsReadOnly(t *testing.T) {
	for _, tc := range []struct {
		name   string
		makeRO func(t *testing.T, f *fixture, id dm.DeviceID) error
	}{
		{"metadata", func(t *testing.T, f *fixture, _ dm.DeviceID) error {
			f.lvm(t, "lvchange", "-q", "-p", "r", f.vg+"/disk")
			return nil
		}},
		{"device only", func(_ *testing.T, f *fixture, id dm.DeviceID) error {
			_, live, err := f.ctl.Table(id)
			if err == nil {
				_, err = f.ctl.LoadReadOnly(id, live)
			}
			if err == nil {
				_, err = f.ctl.Suspend(t.Context(), id, dm.NoFlush)
			}
			if err == nil {
				_, err = f.ctl.Resume(id)
			}
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := newFixture(t)
			f.createLV(t, "disk", "16m")
			id := dm.ByName(f.dmName("disk"))
			if err := tc.makeRO(t, f, id); err != nil {
				t.Fatal(err)
			}
			f.resizeMetadataOnly(t, "lvextend", "disk", "+16m")
			if info, err := f.ctl.Info(id); err != nil || !info.ReadOnly() {
				t.Fatalf("before the refresh: %+v, %v; want a read-only device", info, err)
			}
			res, err := f.refresher(t, refresh.Options{}).Refresh(t.Context(), f.vg, "disk", f.env.Paths())
			if err != nil || !res.Changed {
				t.Fatalf("refresh: %+v, %v", res, err)
			}
			info, err := f.ctl.Info(id)
			if err != nil {
				t.Fatal(err)
			}
			if !info.ReadOnly() {
				t.Errorf("after the refresh the LV is writable: %+v", info)
			}
			fd, err := unix.Open(f.device("disk"), unix.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer unix.Close(fd)
			if _, err := unix.Pwrite(fd, make([]byte, 512), 0); !errors.Is(err, unix.EPERM) {
				t.Errorf("a write to %s after the refresh: %v, want EPERM", f.device("disk"), err)
			}
		})
	}
}

func TestRefreshNotActive(t *testing.T) {
	f := newFixture(t)
	f.createLV(t, "disk", "8m", "--activate", "n")
	_, err := f.refresher(t, refresh.Options{}).Refresh(t.Context(), f.vg, "disk", f.env.Paths())
	if !errors.Is(err, refresh.ErrNotActive) {
		t.Errorf("refresh of an inactive LV: %v, want ErrNotActive", err)
	}
}

// BenchmarkRefresh compares, in the same run, a refresh after a
// metadata-only extension by lvwatch (the library call the agent makes, and
// the CLI process) with `lvchange --refresh`, each over a fresh extension.
func BenchmarkRefresh(b *testing.B) {
	f := newFixture(b)
	f.createLV(b, "disk", "8m")
	r := f.refresher(b, refresh.Options{})
	bin := lvwatchBin(b)
	devices := f.env.Paths()
	extend := func() {
		b.StopTimer()
		f.resizeMetadataOnly(b, "lvextend", "disk", "+1m")
		b.StartTimer()
	}
	timed := func(samples *[]time.Duration, refresh func()) {
		extend()
		start := time.Now()
		refresh()
		*samples = append(*samples, time.Since(start))
	}
	var api, metadata, swap, cli, lvchange []time.Duration
	b.ResetTimer()
	for range b.N {
		timed(&api, func() {
			res, err := r.Refresh(b.Context(), f.vg, "disk", devices)
			if err != nil || !res.Changed {
				b.Fatalf("refresh: %+v, %v", res, err)
			}
			metadata, swap = append(metadata, res.Metadata), append(swap, res.Swap)
		})
		timed(&cli, func() { run(b, bin, "refresh", "--devices", strings.Join(devices, ","), f.vg+"/disk") })
		timed(&lvchange, func() { f.lvm(b, "lvchange", "--refresh", f.vg+"/disk") })
	}
	b.StopTimer()
	latency.Report(b, "lvwatch", api, time.Millisecond)
	latency.Report(b, "lvwatch-metadata", metadata, time.Millisecond)
	latency.Report(b, "lvwatch-swap", swap, time.Millisecond)
	latency.Report(b, "lvwatch-cli", cli, time.Millisecond)
	latency.Report(b, "lvchange", lvchange, time.Millisecond)
	b.ReportMetric(float64(latency.Quantile(lvchange, 0.5))/float64(latency.Quantile(api, 0.5)), "speedup-p50")
	b.ReportMetric(float64(latency.Quantile(lvchange, 0.99))/float64(latency.Quantile(api, 0.99)), "speedup-p99")
	b.ReportMetric(float64(latency.Quantile(lvchange, 0.5))/float64(latency.Quantile(cli, 0.5)), "speedup-cli-p50")
}

// TestKilledBetweenSuspendAndResume: a process refreshing an LV dies (SIGKILL)
// with the LV suspended and the new table loaded; the next refresher to
// start resumes the LV on its live table, and then refreshes it.
func TestKilledBetweenSuspendAndResume(t *testing.T) {
	f := newFixture(t)
	f.createLV(t, "disk", "16m")
	f.resizeMetadataOnly(t, "lvextend", "disk", "+16m")
	id := dm.ByName(f.dmName("disk"))
	t.Cleanup(func() { // lest the fixture's cleanup hang on a suspended LV
		if info, err := f.ctl.Info(id); err == nil && info.Suspended() {
			f.ctl.Resume(id)
		}
	})
	state := t.TempDir()
	helper := exec.Command(os.Args[0])
	helper.Env = append(os.Environ(), "LVWATCH_KILL_HELPER="+f.vg, "LVWATCH_KILL_STATE="+state,
		"LVWATCH_KILL_DEVICES="+strings.Join(f.env.Paths(), ","))
	out, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	helper.Stderr = os.Stderr
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(out)
	for sc.Scan() && sc.Text() != "suspended" {
	}
	helper.Process.Kill()
	helper.Wait()

	info, err := f.ctl.Info(id)
	if err != nil || !info.Suspended() || !info.HasInactiveTable() {
		t.Fatalf("after the kill: %+v, %v; want the LV suspended with the new table loaded", info, err)
	}
	if ents, _ := os.ReadDir(state); len(ents) != 1 {
		t.Fatalf("records after the kill: %v, want one", ents)
	}

	r := f.refresher(t, refresh.Options{StateDir: state})
	info, table, err := f.ctl.Table(id)
	if err != nil || info.Suspended() || info.HasInactiveTable() || dm.TableSectors(table) != 16<<11 {
		t.Fatalf("after the next start: %+v, %d sectors, %v; want the LV running on its old table", info, dm.TableSectors(table), err)
	}
	if ents, _ := os.ReadDir(state); len(ents) != 0 {
		t.Errorf("records after the next start: %v", ents)
	}
	res, err := r.Refresh(t.Context(), f.vg, "disk", f.env.Paths())
	if err != nil || !res.Changed || res.NewSize != 32<<20 {
		t.Errorf("refresh after the recovery: %+v, %v", res, err)
	}
}

// TestMain runs the process TestKilledBetweenSuspendAndResume kills, when its
// environment asks for it, instead of the tests.
func TestMain(m *testing.M) {
	if vg := os.Getenv("LVWATCH_KILL_HELPER"); vg != "" {
		fmt.Fprintln(os.Stderr, killHelper(vg))
		os.Exit(1)
	}
	os.Exit(m.Run())
}

// killHelper refreshes the LV and, suspended, says so and waits to be killed
// instead of resuming. It returns only on failure.
func killHelper(vg string) error {
	ctl, err := dm.Open()
	if err != nil {
		return err
	}
	r, err := refresh.New(stopAtResume{refresh.Kernel(ctl)}, refresh.Options{StateDir: os.Getenv("LVWATCH_KILL_STATE")})
	if err != nil {
		return err
	}
	_, err = r.Refresh(context.Background(), vg, "disk", strings.Split(os.Getenv("LVWATCH_KILL_DEVICES"), ","))
	return fmt.Errorf("refresh returned: %v", err)
}

// stopAtResume waits to be killed where it would resume.
type stopAtResume struct{ refresh.Mapper }

func (stopAtResume) Resume(dm.DeviceID) (dm.Info, error) {
	fmt.Println("suspended")
	select {}
}
