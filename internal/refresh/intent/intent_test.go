package intent

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

const uuid = "LVM-h7na4d4bhItuD3EQnZPad3Z7KPO6ZBptboODn2TsQo0txlwskp3kjkfYxdbSsJBV"

// deadPID is the pid of a process that has exited.
func deadPID(t *testing.T) int {
	t.Helper()
	cmd := exec.Command("true")
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	return cmd.Process.Pid
}

func TestOrphans(t *testing.T) {
	d, err := Open(filepath.Join(t.TempDir(), "intent"))
	if err != nil {
		t.Fatal(err)
	}
	if err := d.Begin(uuid, "vg", "lv"); err != nil {
		t.Fatal(err)
	}
	// Our own record is a swap in progress.
	if got, err := d.Orphans(); err != nil || len(got) != 0 {
		t.Fatalf("orphans while the owner lives: %+v, %v", got, err)
	}
	// The same record from a process that has died, and its temporary file.
	dead := deadPID(t)
	b, _ := json.Marshal(Record{UUID: uuid, VG: "vg", LV: "lv", PID: dead, Start: 1})
	os.WriteFile(filepath.Join(d.path, uuid+suffix), b, 0o600)
	tmp := filepath.Join(d.path, "."+uuid+"."+strconv.Itoa(dead)+".tmp")
	os.WriteFile(tmp, []byte("{"), 0o600)
	got, err := d.Orphans()
	if err != nil || len(got) != 1 || got[0].PID != dead || got[0].VG != "vg" {
		t.Fatalf("orphans: %+v, %v; want the dead owner's record", got, err)
	}
	if _, err := os.Stat(tmp); !os.IsNotExist(err) {
		t.Errorf("the dead owner's temporary file is still there: %v", err)
	}
	if err := d.Done(uuid); err != nil {
		t.Fatal(err)
	}
	if got, err := d.Orphans(); err != nil || len(got) != 0 {
		t.Errorf("after Done: %+v, %v", got, err)
	}
	// A pid reused by another process is no owner either.
	b, _ = json.Marshal(Record{UUID: uuid, VG: "vg", LV: "lv", PID: os.Getpid(), Start: d.start + 1})
	os.WriteFile(filepath.Join(d.path, uuid+suffix), b, 0o600)
	if got, err := d.Orphans(); err != nil || len(got) != 1 {
		t.Errorf("a record of an earlier process with our pid: %+v, %v; want an orphan", got, err)
	}
	// A record that does not decode is reported and kept.
	os.WriteFile(filepath.Join(d.path, "LVM-x"+suffix), []byte("{}"), 0o600)
	if _, err := d.Orphans(); err == nil {
		t.Error("a bad record went unreported")
	}
}

func FuzzDecode(f *testing.F) {
	b, _ := json.Marshal(Record{UUID: uuid, VG: "vg", LV: "lv", PID: 1, Start: 2})
	f.Add(b, uuid)
	f.Add([]byte(`{"dm_uuid":"../x","vg":"a","lv":"b","pid":1}`), "../x")
	f.Fuzz(func(t *testing.T, b []byte, name string) {
		r, err := Decode(b, name)
		if err != nil {
			return
		}
		if r.UUID != name || checkUUID(r.UUID) != nil || r.PID <= 0 || r.VG == "" || r.LV == "" {
			t.Errorf("accepted %+v under %q", r, name)
		}
	})
}
