//go:build vmtest

package dm_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lvwatch/lvwatch/internal/dm"
	"github.com/lvwatch/lvwatch/internal/dm/dmtest"
	"github.com/lvwatch/lvwatch/internal/loopdev"
)

// disk is a fresh loop device of size bytes, detached when the test ends.
func disk(t *testing.T, size int64) *loopdev.Device {
	t.Helper()
	d, err := loopdev.NewSparse(t.TempDir(), size)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

var deviceSeq int

// create makes a device with a name and uuid unique to the test and removes it when the test ends.
func create(t *testing.T, c *dm.Control) dm.Info {
	t.Helper()
	deviceSeq++
	name := fmt.Sprintf("lvwatch-test-%d-%d", os.Getpid(), deviceSeq)
	info, err := c.Create(name, "LVWATCH-TEST-"+name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Remove(dm.ByName(name)); err != nil && !errors.Is(err, dm.ErrNoDevice) {
			t.Errorf("cleanup: %v", err)
		}
	})
	return info
}

// linear maps n consecutive pieces of length sectors each onto d, starting at sector from.
func linear(d *loopdev.Device, n int, length, from uint64) []dm.Target {
	var table []dm.Target
	for i := range uint64(n) {
		table = append(table, dm.Target{Start: i * length, Length: length, Type: "linear",
			Params: fmt.Sprintf("%d:%d %d", d.Major, d.Minor, from+i*length)})
	}
	return table
}

func activate(t *testing.T, c *dm.Control, id dm.DeviceID, table []dm.Target) {
	t.Helper()
	if _, err := c.Load(id, table); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Resume(id); err != nil {
		t.Fatal(err)
	}
}

func TestVersion(t *testing.T) {
	c := dmtest.Control(t)
	v, err := c.Version()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("device-mapper ioctl interface %v", v)
	if v.Major != 4 {
		t.Errorf("major version %d, want 4", v.Major)
	}
}

func TestLifecycle(t *testing.T) {
	c := dmtest.Control(t)
	d := disk(t, 64<<20)
	info := create(t, c)
	if info.HasLiveTable() || info.HasInactiveTable() {
		t.Fatalf("new device has a table: %+v", info)
	}
	name := dm.ByName(info.Name)

	table := linear(d, 1, 2048, 0)
	loaded, err := c.Load(name, table)
	if err != nil {
		t.Fatal(err)
	}
	if !loaded.HasInactiveTable() || loaded.HasLiveTable() {
		t.Fatalf("after load: %+v, want only an inactive table", loaded)
	}
	live, err := c.Resume(name)
	if err != nil {
		t.Fatal(err)
	}
	if !live.HasLiveTable() || live.HasInactiveTable() || live.Suspended() {
		t.Fatalf("after resume: %+v, want a live table, running", live)
	}

	// The three ways to address a device find the same one.
	for _, id := range []dm.DeviceID{name, dm.ByUUID(info.UUID), dm.ByDevno(info.Major, info.Minor)} {
		got, err := c.Info(id)
		if err != nil {
			t.Fatalf("info %v: %v", id, err)
		}
		if got.Name != info.Name || got.UUID != info.UUID || got.Major != info.Major || got.Minor != info.Minor {
			t.Errorf("info %v = %+v, want the device %+v", id, got, info)
		}
	}

	devs, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	want := dm.Device{Name: info.Name, UUID: info.UUID, Major: info.Major, Minor: info.Minor}
	if !slices.Contains(devs, want) {
		t.Errorf("list %+v does not have %+v", devs, want)
	}

	_, got, err := c.Table(name)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, table) {
		t.Errorf("table %+v, want %+v", got, table)
	}
	_, status, err := c.Status(name)
	if err != nil {
		t.Fatal(err)
	}
	if len(status) != 1 || status[0].Type != "linear" || status[0].Length != 2048 {
		t.Errorf("status %+v, want one linear target of 2048 sectors", status)
	}
	if n := dmtest.BlockSize(t, info.BlockDevice()); n != 2048*512 {
		t.Errorf("%s is %d bytes, want %d", info.BlockDevice(), n, 2048*512)
	}

	suspended, err := c.Suspend(t.Context(), name, dm.NoFlush)
	if err != nil {
		t.Fatal(err)
	}
	if !suspended.Suspended() {
		t.Errorf("after suspend: %+v, want suspended", suspended)
	}
	if _, err := c.Resume(name); err != nil {
		t.Fatal(err)
	}

	if err := c.Remove(name); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Info(name); !errors.Is(err, dm.ErrNoDevice) || !errors.Is(err, unix.ENXIO) {
		t.Errorf("info after remove: %v, want ErrNoDevice (ENXIO)", err)
	}
}

// TestSwap grows a live device the way a refresh does: load the new table
// into the inactive slot, suspend without flushing, resume.
func TestSwap(t *testing.T) {
	c := dmtest.Control(t)
	d := disk(t, 64<<20)
	info := create(t, c)
	id := dm.ByUUID(info.UUID)
	old := linear(d, 1, 4096, 0)
	activate(t, c, id, old)

	grown := linear(d, 3, 4096, 0)
	if _, err := c.Load(id, grown); err != nil {
		t.Fatal(err)
	}
	// Until the resume, the old table is the live one.
	st, live, err := c.Table(id)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(live, old) || !st.HasInactiveTable() {
		t.Fatalf("after load: live %+v (want %+v), state %+v", live, old, st)
	}
	if _, err := c.Suspend(t.Context(), id, dm.NoFlush); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Resume(id); err != nil {
		t.Fatal(err)
	}
	_, live, err = c.Table(id)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(live, grown) {
		t.Errorf("after resume: live %+v, want %+v", live, grown)
	}
	if n, want := dmtest.BlockSize(t, info.BlockDevice()), dm.TableSectors(grown)*512; n != want {
		t.Errorf("%s is %d bytes, want %d", info.BlockDevice(), n, want)
	}
}

func TestClearInactive(t *testing.T) {
	c := dmtest.Control(t)
	d := disk(t, 64<<20)
	info := create(t, c)
	id := dm.ByName(info.Name)
	old := linear(d, 1, 4096, 0)
	activate(t, c, id, old)
	if _, err := c.Load(id, linear(d, 2, 4096, 0)); err != nil {
		t.Fatal(err)
	}
	cleared, err := c.ClearInactive(id)
	if err != nil {
		t.Fatal(err)
	}
	if cleared.HasInactiveTable() {
		t.Errorf("after clear: %+v, want no inactive table", cleared)
	}
	if _, err := c.Resume(id); err != nil {
		t.Fatal(err)
	}
	if _, live, err := c.Table(id); err != nil || !slices.Equal(live, old) {
		t.Errorf("after clear and resume: %+v, %v; want the old table %+v", live, err, old)
	}
}

// TestLargeReplies makes the kernel answer "buffer full" for a table and for
// the device list, so that both replies must grow.
func TestLargeReplies(t *testing.T) {
	c := dmtest.Control(t)
	d := disk(t, 64<<20)
	info := create(t, c)
	table := linear(d, 3000, 8, 0) // about 150 KiB of reply
	activate(t, c, dm.ByName(info.Name), table)
	_, got, err := c.Table(dm.ByName(info.Name))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, table) {
		t.Errorf("read back %d targets, not the %d loaded", len(got), len(table))
	}

	var made []dm.Info
	for range 150 { // about 30 KiB of device list
		made = append(made, create(t, c))
	}
	devs, err := c.List()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range made {
		if !slices.ContainsFunc(devs, func(d dm.Device) bool { return d.Name == m.Name && d.UUID == m.UUID }) {
			t.Fatalf("list of %d devices misses %s", len(devs), m.Name)
		}
	}
}

func TestErrors(t *testing.T) {
	c := dmtest.Control(t)
	if _, err := c.Info(dm.ByName("lvwatch-test-no-such-device")); !errors.Is(err, dm.ErrNoDevice) {
		t.Errorf("info of a missing device: %v, want ErrNoDevice", err)
	}
	d := disk(t, 64<<20)
	info := create(t, c)
	if _, err := c.Create(info.Name, ""); !errors.Is(err, dm.ErrBusy) {
		t.Errorf("create with a taken name: %v, want ErrBusy", err)
	}

	id := dm.ByName(info.Name)
	bad := []dm.Target{{Start: 0, Length: 8, Type: "no-such-target", Params: ""}}
	if _, err := c.Load(id, bad); err == nil || !strings.Contains(err.Error(), "table load") {
		t.Errorf("load of an unknown target type: %v, want an error", err)
	}
	if st, err := c.Info(id); err != nil || st.HasInactiveTable() {
		t.Errorf("after a failed load: %+v, %v; want no inactive table", st, err)
	}

	activate(t, c, id, linear(d, 1, 8, 0))
	f, err := os.Open(info.BlockDevice())
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := c.Remove(id); !errors.Is(err, dm.ErrBusy) {
		t.Errorf("remove of an open device: %v, want ErrBusy", err)
	}
}

// TestSuspendBounded: a suspend waits for the I/O in flight, NoFlush or not,
// so a device whose I/O hangs below it (here: a write queued on a suspended
// device underneath, as on a multipath map with no path) would hold it
// forever. When the context ends, the suspend gives up and the device keeps
// running; the write completes once the device below resumes.
func TestSuspendBounded(t *testing.T) {
	c := dmtest.Control(t)
	d := disk(t, 64<<20)
	lower := create(t, c)
	activate(t, c, dm.ByUUID(lower.UUID), linear(d, 1, 8192, 0))
	upper := create(t, c)
	upperID := dm.ByUUID(upper.UUID)
	activate(t, c, upperID, []dm.Target{{Start: 0, Length: 8192, Type: "linear", Params: fmt.Sprintf("%d:%d 0", lower.Major, lower.Minor)}})

	if _, err := c.Suspend(t.Context(), dm.ByUUID(lower.UUID), dm.NoFlush); err != nil {
		t.Fatal(err)
	}
	resumeLower := func() {
		if _, err := c.Resume(dm.ByUUID(lower.UUID)); err != nil {
			t.Error(err)
		}
	}
	t.Cleanup(resumeLower) // a second resume is harmless

	f, err := os.OpenFile(upper.BlockDevice(), os.O_RDWR|unix.O_DIRECT, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf, err := unix.Mmap(-1, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(buf)
	wrote := make(chan error, 1)
	go func() {
		_, err := f.WriteAt(buf, 0)
		wrote <- err
	}()
	// The write is in flight on upper once the block layer counts it.
	inflight := fmt.Sprintf("/sys/dev/block/%d:%d/inflight", upper.Major, upper.Minor)
	for deadline := time.Now().Add(10 * time.Second); ; {
		b, _ := os.ReadFile(inflight)
		if f := strings.Fields(string(b)); len(f) == 2 && f[1] != "0" {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the write never showed in %s", inflight)
		}
		time.Sleep(time.Millisecond)
	}

	ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
	defer cancel()
	_, err = c.Suspend(ctx, upperID, dm.NoFlush|dm.SkipLockfs)
	if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, unix.EINTR) {
		t.Fatalf("suspend with I/O stuck below: %v, want it interrupted at the deadline", err)
	}
	t.Log(err)
	if info, err := c.Info(upperID); err != nil || info.Suspended() {
		t.Errorf("after the interrupted suspend: %+v, %v; want the device running", info, err)
	}
	resumeLower()
	if err := <-wrote; err != nil {
		t.Errorf("the write held below: %v", err)
	}
}
