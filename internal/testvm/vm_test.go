package testvm

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lvwatch/lvwatch/internal/testutil"
)

// hangLimit only turns a VM that hangs into a failure: a run takes seconds.
const hangLimit = 3 * time.Minute

func TestVerifiesOnARoomyDisk(t *testing.T) {
	kit := NewKit(t)
	disk := NewQCOW2Disk(t, 256<<20, 256<<20)
	vm := Start(t, kit, Options{Drives: []Drive{{Path: disk.Path, Werror: "stop"}}, DataMiB: 32})
	r := wait(t, vm)
	if d := r.Drives[0]; d.Device != "vda" || d.Bytes != 32<<20 {
		t.Errorf("drive 0: %+v, want vda with 32 MiB", d)
	}
}

// TestPausesOnENOSPCAndResumes is the case lvwatch exists for: the VM writes
// past the end of its disk's device, QEMU pauses it, the device grows, the VM
// continues and its data is intact. On both machines: tools/testvm boots a
// microvm in tools/vmtest's guest.
func TestPausesOnENOSPCAndResumes(t *testing.T) {
	for _, machine := range []string{Q35, MicroVM} {
		t.Run(machine, func(t *testing.T) {
			kit := NewKit(t)
			disk := NewQCOW2Disk(t, 16<<20, 256<<20)
			vm := Start(t, kit, Options{Drives: []Drive{{Path: disk.Path, Werror: "stop"}}, DataMiB: 32, Machine: machine})
			q := dialQMP(t, vm.QMP(0))
			q.waitStatus(t, vm, "io-error")
			if got := q.noSpace(t); len(got) != 1 || got[0] != "d0" {
				t.Fatalf("drives without space: %q, want [d0]", got)
			}
			disk.Grow(t, 64<<20)
			q.execute(t, "cont", nil)
			wait(t, vm)
		})
	}
}

// TestBootOptions: monitors at the caller's paths (a stale socket there
// replaced) before the VM's own, and the console on the caller's writer too.
func TestBootOptions(t *testing.T) {
	kit := NewKit(t)
	disk := NewQCOW2Disk(t, 64<<20, 64<<20)
	dir := t.TempDir()
	stale := filepath.Join(dir, "stale.qmp")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	var console testutil.LogBuffer
	vm, err := Boot(t.Context(), kit, Options{Drives: []Drive{{Path: disk.Path}}, DataMiB: 4,
		QMP: []string{stale, filepath.Join(dir, "b.qmp")}, Monitors: 1, Console: &console})
	if err != nil {
		t.Fatal(err)
	}
	defer vm.Close()
	if vm.QMP(0) != stale || vm.QMP(1) != filepath.Join(dir, "b.qmp") || filepath.Dir(vm.QMP(2)) == dir {
		t.Errorf("monitors %q, %q, %q", vm.QMP(0), vm.QMP(1), vm.QMP(2))
	}
	for i := range 3 {
		dialQMP(t, vm.QMP(i)).execute(t, "query-status", nil)
	}
	wait(t, vm)
	if !strings.Contains(console.String(), "testvm: done") {
		t.Errorf("the console writer got %q", console.String())
	}
}

func TestBootRefuses(t *testing.T) {
	file := filepath.Join(t.TempDir(), "not-a-socket")
	os.WriteFile(file, nil, 0o600)
	for name, opt := range map[string]Options{
		"no drives":     {},
		"a machine":     {Drives: []Drive{{Path: "/dev/null"}}, Machine: "pc"},
		"an offset":     {Drives: []Drive{{Path: "/dev/null", Offset: 4096}}},
		"a file at QMP": {Drives: []Drive{{Path: "/dev/null"}}, QMP: []string{file}},
	} {
		if vm, err := Boot(t.Context(), Kit{}, opt); err == nil {
			vm.Close()
			t.Errorf("%s: booted", name)
		}
	}
	if _, err := os.Stat(file); err != nil {
		t.Errorf("the file at the QMP path: %v", err)
	}
}

// TestTwoDrivesPause: the guest writes both drives at once, so that both run
// out of space; each is grown as it does, until the guest finishes.
func TestTwoDrivesPause(t *testing.T) {
	kit := NewKit(t)
	disks := map[string]*QCOW2Disk{"d0": NewQCOW2Disk(t, 16<<20, 256<<20), "d1": NewQCOW2Disk(t, 16<<20, 256<<20)}
	vm := Start(t, kit, Options{
		Drives:  []Drive{{Path: disks["d0"].Path, Werror: "stop"}, {Path: disks["d1"].Path, Werror: "enospc", AIO: "threads"}},
		DataMiB: 24,
	})
	q := dialQMP(t, vm.QMP(0))
	grown := map[string]bool{}
	for len(grown) < len(disks) {
		q.waitStatus(t, vm, "io-error")
		full := q.noSpace(t)
		if len(full) == 0 {
			t.Fatal("paused on an I/O error with no drive out of space")
		}
		for _, id := range full {
			if grown[id] {
				t.Fatalf("%s out of space again after growing", id)
			}
			disks[id].Grow(t, 64<<20)
			grown[id] = true
		}
		q.execute(t, "cont", nil)
	}
	wait(t, vm)
}

// TestTwoVMsShareADisk: two VMs write apart on one image on one device, both
// pause for want of space on it, and both finish once it has grown.
func TestTwoVMsShareADisk(t *testing.T) {
	kit := NewKit(t)
	disk := NewSharedQCOW2Disk(t, 16<<20, 128<<20)
	var vms []*VM
	for _, offset := range []int64{0, 64 << 20} {
		vms = append(vms, Start(t, kit, Options{
			Drives:  []Drive{{Path: disk.Path, Werror: "stop", Shared: true, Offset: offset}},
			DataMiB: 16,
		}))
	}
	var monitors []*qmpConn
	for _, vm := range vms {
		q := dialQMP(t, vm.QMP(0))
		q.waitStatus(t, vm, "io-error")
		monitors = append(monitors, q)
	}
	disk.Grow(t, 160<<20) // the image's metadata and all its clusters
	for _, q := range monitors {
		q.execute(t, "cont", nil)
	}
	for _, vm := range vms {
		wait(t, vm)
	}
}

func wait(t *testing.T, vm *VM) Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), hangLimit)
	defer cancel()
	r, err := vm.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// qmpConn speaks QMP's JSON lines on a VM's monitor, as much as these tests need.
type qmpConn struct {
	conn net.Conn
	dec  *json.Decoder
}

func dialQMP(t *testing.T, path string) *qmpConn {
	t.Helper()
	conn, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	q := &qmpConn{conn: conn, dec: json.NewDecoder(conn)}
	conn.SetDeadline(time.Now().Add(hangLimit))
	var greeting struct{ QMP json.RawMessage }
	if err := q.dec.Decode(&greeting); err != nil || greeting.QMP == nil {
		t.Fatalf("QMP greeting on %s: %v", path, err)
	}
	q.execute(t, "qmp_capabilities", nil)
	return q
}

// execute runs a command and decodes its return into ret, skipping events.
func (q *qmpConn) execute(t *testing.T, command string, ret any) {
	t.Helper()
	q.conn.SetDeadline(time.Now().Add(hangLimit))
	if err := json.NewEncoder(q.conn).Encode(map[string]string{"execute": command}); err != nil {
		t.Fatalf("QMP %s: %v", command, err)
	}
	for {
		var msg struct {
			Return json.RawMessage
			Error  *struct{ Class, Desc string }
		}
		if err := q.dec.Decode(&msg); err != nil {
			t.Fatalf("QMP %s: %v", command, err)
		}
		if msg.Error != nil {
			t.Fatalf("QMP %s: %s: %s", command, msg.Error.Class, msg.Error.Desc)
		}
		if msg.Return != nil {
			if ret != nil {
				if err := json.Unmarshal(msg.Return, ret); err != nil {
					t.Fatalf("QMP %s: return %s: %v", command, msg.Return, err)
				}
			}
			return
		}
	}
}

// waitStatus polls query-status until the VM's status is want.
func (q *qmpConn) waitStatus(t *testing.T, vm *VM, want string) {
	t.Helper()
	for deadline := time.Now().Add(hangLimit); ; time.Sleep(20 * time.Millisecond) {
		var status struct{ Status string }
		q.execute(t, "query-status", &status)
		if status.Status == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("status %q after %v, want %q\n%s", status.Status, hangLimit, want, vm.Console())
		}
	}
}

// noSpace lists the drives whose last write failed for want of space.
func (q *qmpConn) noSpace(t *testing.T) []string {
	t.Helper()
	var blocks []struct {
		Device   string
		IOStatus string `json:"io-status"`
	}
	q.execute(t, "query-block", &blocks)
	var ids []string
	for _, b := range blocks {
		if b.IOStatus == "nospace" {
			ids = append(ids, b.Device)
		}
	}
	return ids
}
