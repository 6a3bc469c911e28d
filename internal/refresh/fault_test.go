package refresh_test

// Fault injection on tier 1: real LVM2 metadata on loop devices, and a fake
// device-mapper (this machine has none) that fails where told.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/lvwatch/lvwatch/internal/dm"
	"github.com/lvwatch/lvwatch/internal/lvm"
	"github.com/lvwatch/lvwatch/internal/lvm/lvmtest"
	"github.com/lvwatch/lvwatch/internal/refresh"
)

// fakeDM is one device-mapper device, as the kernel keeps it.
type fakeDM struct {
	mu             sync.Mutex
	live, inactive []dm.Target
	suspended      bool
	calls          []string
	resumes        int

	failResume  func(n int) bool // fail the nth resume (1-based)
	hangSuspend bool             // suspend waits for I/O that never completes
	wrongSize   bool
	onLoad      func()
}

func (f *fakeDM) info() dm.Info {
	flags := uint32(unix.DM_ACTIVE_PRESENT_FLAG)
	if f.inactive != nil {
		flags |= unix.DM_INACTIVE_PRESENT_FLAG
	}
	if f.suspended {
		flags |= unix.DM_SUSPEND_FLAG
	}
	return dm.Info{Minor: 7, Flags: flags}
}

func (f *fakeDM) call(name string) dm.Info {
	f.calls = append(f.calls, name)
	return f.info()
}

func (f *fakeDM) Table(dm.DeviceID) (dm.Info, []dm.Target, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.info(), slices.Clone(f.live), nil
}

func (f *fakeDM) Load(_ dm.DeviceID, t []dm.Target) (dm.Info, error) {
	if f.onLoad != nil {
		f.onLoad()
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inactive = slices.Clone(t)
	return f.call("load"), nil
}

func (f *fakeDM) LoadReadOnly(id dm.DeviceID, t []dm.Target) (dm.Info, error) { return f.Load(id, t) }

func (f *fakeDM) ClearInactive(dm.DeviceID) (dm.Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.inactive = nil
	return f.call("clear"), nil
}

func (f *fakeDM) Suspend(ctx context.Context, _ dm.DeviceID, _ dm.SuspendFlags) (dm.Info, error) {
	if f.hangSuspend { // as the kernel: interrupted, the suspend is undone
		<-ctx.Done()
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.call("suspend interrupted"), fmt.Errorf("dm suspend: %w: interrupted: %w", unix.EINTR, ctx.Err())
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.suspended = true
	return f.call("suspend"), nil
}

func (f *fakeDM) Resume(dm.DeviceID) (dm.Info, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.resumes++
	if f.failResume != nil && f.failResume(f.resumes) {
		return f.call("resume failed"), fmt.Errorf("dm resume: %w", unix.EIO)
	}
	if f.inactive != nil {
		f.live, f.inactive = f.inactive, nil
	}
	f.suspended = false
	return f.call("resume"), nil
}

func (f *fakeDM) BlockSize(string) (uint64, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	size := dm.TableSectors(f.live) * 512
	if f.wrongSize {
		size -= 512
	}
	return size, nil
}

// running checks that the device runs on table, with nothing pending.
func (f *fakeDM) running(t *testing.T, table []dm.Target) {
	t.Helper()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.suspended || f.inactive != nil || !slices.Equal(f.live, table) {
		t.Errorf("device: suspended %v, inactive %v, live %v; want running on %v (calls %v)", f.suspended, f.inactive, f.live, table, f.calls)
	}
}

// faultFixture is a VG with an LV, "disk", that the fake has live at 8 MiB
// while the metadata on disk says 16 MiB: what another host's lvextend leaves.
type faultFixture struct {
	env          *lvmtest.Env
	vg           string
	old, grown   []dm.Target
	fake         *fakeDM
	stateDir     string
	log          bytes.Buffer
	refreshError error
}

func newFaultFixture(t *testing.T) *faultFixture {
	t.Helper()
	env := lvmtest.New(t, 2, 64<<20)
	f := &faultFixture{env: env, vg: fmt.Sprintf("lvwatch_fault_%d_%d", os.Getpid(), faultSeq.Add(1)), stateDir: t.TempDir()}
	env.CreateVG(f.vg, env.Paths(), nil, []string{"-s", "1m"})
	env.MustRun("lvcreate", "-q", "-n", "disk", "-L", "8m", "-Zn", "-Wn", f.vg, env.Paths()[0])
	t.Setenv("LVM_SYSTEM_DIR", env.Dir) // lvm's lock directory, as the test's lvm commands use it
	f.old = f.table(t)
	env.MustRun("lvextend", "-q", "-L", "16m", f.vg+"/disk", env.Paths()[0])
	f.grown = f.table(t)
	f.fake = &fakeDM{live: f.old}
	return f
}

var faultSeq atomic.Int32

func (f *faultFixture) table(t *testing.T) []dm.Target {
	t.Helper()
	vg, err := lvm.ReadVG(t.Context(), f.vg, f.env.Paths())
	if err != nil {
		t.Fatal(err)
	}
	table, err := vg.Table("disk")
	if err != nil {
		t.Fatal(err)
	}
	return table
}

func (f *faultFixture) refresher(t *testing.T, opts refresh.Options) *refresh.Refresher {
	t.Helper()
	opts.StateDir = f.stateDir
	opts.Log = zerolog.New(&f.log)
	r, err := refresh.New(f.fake, opts)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func (f *faultFixture) refresh(t *testing.T, r *refresh.Refresher) refresh.Result {
	t.Helper()
	res, err := r.Refresh(t.Context(), f.vg, "disk", f.env.Paths())
	f.refreshError = err
	return res
}

// records are the intent records left in the state directory.
func (f *faultFixture) records(t *testing.T) []string {
	t.Helper()
	ents, err := os.ReadDir(f.stateDir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		out = append(out, e.Name())
	}
	return out
}

func TestRefreshSwapsAndForgets(t *testing.T) {
	f := newFaultFixture(t)
	res := f.refresh(t, f.refresher(t, refresh.Options{}))
	if f.refreshError != nil || !res.Changed || res.NewSize != 16<<20 || res.OldSize != 8<<20 {
		t.Fatalf("refresh: %+v, %v", res, f.refreshError)
	}
	f.fake.running(t, f.grown)
	if want := []string{"load", "suspend", "resume"}; !slices.Equal(f.fake.calls, want) {
		t.Errorf("calls %v, want %v", f.fake.calls, want)
	}
	if recs := f.records(t); len(recs) != 0 {
		t.Errorf("records left after a swap: %v", recs)
	}
}

// TestRollbackOnFailedResume: the resume on the new table fails; the
// refresher drops the new table and resumes the old one.
func TestRollbackOnFailedResume(t *testing.T) {
	f := newFaultFixture(t)
	f.fake.failResume = func(n int) bool { return n == 1 }
	f.refresh(t, f.refresher(t, refresh.Options{}))
	if f.refreshError == nil || !strings.Contains(f.refreshError.Error(), "resume on the new table") {
		t.Fatalf("refresh with a failing resume: %v", f.refreshError)
	}
	t.Log(f.refreshError)
	f.fake.running(t, f.old)
	if want := []string{"load", "suspend", "resume failed", "clear", "resume"}; !slices.Equal(f.fake.calls, want) {
		t.Errorf("calls %v, want %v", f.fake.calls, want)
	}
	if recs := f.records(t); len(recs) != 0 {
		t.Errorf("records left after a rollback: %v", recs)
	}
}

// TestFailedSizeCheck: the device's size after the swap is not the
// metadata's; the refresh fails, and the device runs.
func TestFailedSizeCheck(t *testing.T) {
	f := newFaultFixture(t)
	f.fake.wrongSize = true
	res := f.refresh(t, f.refresher(t, refresh.Options{}))
	if f.refreshError == nil || !strings.Contains(f.refreshError.Error(), "after the swap") || !res.Changed {
		t.Fatalf("refresh with a wrong size after it: %+v, %v", res, f.refreshError)
	}
	f.fake.running(t, f.grown)
	if recs := f.records(t); len(recs) != 0 {
		t.Errorf("records left: %v", recs)
	}
}

// TestSwapBound: the suspend waits for I/O in flight that never completes;
// at the swap bound it gives up, and the old table stays live.
func TestSwapBound(t *testing.T) {
	f := newFaultFixture(t)
	f.fake.hangSuspend = true
	f.refresh(t, f.refresher(t, refresh.Options{SwapTimeout: 50 * time.Millisecond}))
	if !errors.Is(f.refreshError, context.DeadlineExceeded) {
		t.Fatalf("refresh with a suspend that never completes: %v, want the swap bound", f.refreshError)
	}
	f.fake.running(t, f.old)
	if recs := f.records(t); len(recs) != 0 {
		t.Errorf("records left: %v", recs)
	}
}

// TestNextStartResumes: when even the rollback's resume fails, the LV stays
// suspended and its record stays; the next refresher to start, once the
// process that failed is gone, resumes it.
func TestNextStartResumes(t *testing.T) {
	f := newFaultFixture(t)
	broken := true
	f.fake.failResume = func(int) bool { return broken }
	f.refresh(t, f.refresher(t, refresh.Options{}))
	if f.refreshError == nil || !strings.Contains(f.refreshError.Error(), "left suspended") {
		t.Fatalf("refresh whose resumes all fail: %v", f.refreshError)
	}
	recs := f.records(t)
	if len(recs) != 1 || !f.fake.suspended {
		t.Fatalf("records %v, suspended %v: want the LV suspended and recorded", recs, f.fake.suspended)
	}
	// As if this process had died: the record's owner is a dead process.
	path := filepath.Join(f.stateDir, recs[0])
	var rec map[string]any
	b, _ := os.ReadFile(path)
	if err := json.Unmarshal(b, &rec); err != nil {
		t.Fatal(err)
	}
	dead := exec.Command("true")
	dead.Run()
	rec["pid"] = dead.Process.Pid
	b, _ = json.Marshal(rec)
	os.WriteFile(path, b, 0o600)

	broken = false
	f.refresher(t, refresh.Options{})
	f.fake.running(t, f.old)
	if recs := f.records(t); len(recs) != 0 {
		t.Errorf("records left after the next start: %v", recs)
	}
	if !strings.Contains(f.log.String(), "resumed an LV whose swap a dead process left unfinished") {
		t.Errorf("no log line for the resume:\n%s", f.log.String())
	}
}

// TestRefreshHoldsVGLock: from the read to the resume, a local lvm command
// cannot change the VG (told not to wait for the lock, lvextend fails).
func TestRefreshHoldsVGLock(t *testing.T) {
	f := newFaultFixture(t)
	extend := []string{"lvextend", "-q", "--config", "global/wait_for_locks=0", "-L", "+1m", f.vg + "/disk"}
	var during error
	f.fake.onLoad = func() { _, during = f.env.Run(extend...) }
	f.refresh(t, f.refresher(t, refresh.Options{}))
	if f.refreshError != nil {
		t.Fatal(f.refreshError)
	}
	if during == nil {
		t.Error("lvextend changed the VG while the refresh was swapping its LV's table")
	} else if !strings.Contains(during.Error(), "lock") {
		t.Errorf("lvextend during the swap: %v, want a lock failure", during)
	}
	f.env.MustRun(extend...)
}

// TestLogsMetadataWarnings: what the reader found wrong is logged once per
// read of the metadata, not on every refresh served from the cache.
func TestLogsMetadataWarnings(t *testing.T) {
	f := newFaultFixture(t)
	r := f.refresher(t, refresh.Options{})
	for range 2 {
		// Only the PV the LV is on: the VG's other PV is missing.
		if _, err := r.Refresh(t.Context(), f.vg, "disk", f.env.Paths()[:1]); err != nil {
			t.Fatal(err)
		}
	}
	if n := strings.Count(f.log.String(), "not found on this host"); n != 1 {
		t.Errorf("%d warnings about the missing PV, want 1:\n%s", n, f.log.String())
	}
}
