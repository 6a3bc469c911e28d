package resume

import (
	"errors"
	"strings"
	"testing"

	"github.com/lvwatch/lvwatch/internal/qmp"
	"github.com/lvwatch/lvwatch/internal/watch"
)

func TestDecide(t *testing.T) {
	lvA, lvB, other := watch.Dev{Major: 253, Minor: 3}, watch.Dev{Major: 253, Minor: 4}, watch.Dev{Major: 7, Minor: 0}
	sizes := map[string]uint64{"/dev/dm-3": 256 << 20, "/dev/dm-4": 64 << 20}
	sizeOf := func(p string) (uint64, error) {
		if sz, ok := sizes[p]; ok {
			return sz, nil
		}
		return 0, errors.New("no such device")
	}
	a := Drive{Name: "vda", Path: "/dev/dm-3", Dev: lvA, NoSpace: true, Highest: 64 << 20}
	b := Drive{Name: "vdb", Path: "/dev/dm-4", Dev: lvB, NoSpace: true, Highest: 64 << 20}
	fine := Drive{Name: "vdc", Path: "/dev/loop0", Dev: other}
	grownA := func(d Drive) bool { return d.Dev == lvA }
	paused := func(drives ...Drive) State { return State{Status: "io-error", IOErrorPause: true, Drives: drives} }

	for _, tc := range []struct {
		name string
		st   State
		devs []watch.Dev
		room Room // grownA when nil
		want Action
		why  string // a part of the reason
	}{
		{"the drive got room", paused(a, fine), []watch.Dev{lvA}, nil, Resumed, "room again on vda"},
		{"not on the devices", paused(fine), []watch.Dev{lvA}, nil, Unaffected, "uses none"},
		{"paused by a person", State{Status: "paused"}, []watch.Dev{lvA}, nil, Left, "not paused on an I/O error"},
		{"running", State{Status: "running"}, []watch.Dev{lvA}, nil, Left, "status running"},
		{"another drive failed otherwise", paused(a, Drive{Name: "vdb", Path: "/dev/dm-4", Dev: lvB, OtherError: true}), []watch.Dev{lvA}, nil, Left, "another I/O error too, on vdb"},
		{"which drives cannot be told", State{Status: "paused (I/O error)", IOErrorPause: true, Unknown: "cannot tell", Drives: []Drive{a}}, []watch.Dev{lvA}, nil, Left, "cannot tell"},
		{"another error", paused(Drive{Name: "vda", Path: "/dev/dm-3", Dev: lvA}), []watch.Dev{lvA}, nil, Left, "not for want of space"},
		{"a second drive still full", paused(a, b), []watch.Dev{lvA}, nil, Left, "vdb on /dev/dm-4 (not grown)"},
		{"grown too little", paused(b), []watch.Dev{lvB}, func(Drive) bool { return true }, Left, "64MiB, its highest write at 64MiB"},
		{"a file", paused(Drive{Name: "vda", Path: "/img.qcow2", NoSpace: true}, a), []watch.Dev{lvA}, nil, Left, "not on a block device"},
		{"highest unknown", paused(Drive{Name: "vda", Path: "/dev/dm-3", Dev: lvA, NoSpace: true}), []watch.Dev{lvA}, nil, Resumed, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			room := tc.room
			if room == nil {
				room = grownA
			}
			got, why, full, waiting := Decide(tc.st, tc.devs, room, sizeOf)
			if got != tc.want || !strings.Contains(why, tc.why) {
				t.Fatalf("Decide = %s, %q; want %s, %q", got, why, tc.want, tc.why)
			}
			if (got == Left && strings.HasPrefix(why, "still out of space")) != (len(waiting) > 0) {
				t.Fatalf("waiting %v does not match %q", waiting, why)
			}
			if got == Resumed && len(full) == 0 {
				t.Fatalf("resumed with no drive out of space")
			}
		})
	}
}

func TestHostPath(t *testing.T) {
	for name, want := range map[string]string{
		"/dev/vg/lv": "/dev/vg/lv",
		`json:{"driver": "qcow2", "file": {"driver": "host_device", "filename": "/dev/dm-3"}}`: "/dev/dm-3",
		`json:{"driver": "qcow2"}`: `json:{"driver": "qcow2"}`,
		`json:{garbage`:            `json:{garbage`,
	} {
		if got := hostPath(name); got != want {
			t.Errorf("hostPath(%q) = %q, want %q", name, got, want)
		}
	}
}

// Proxmox VE puts a throttle filter node over each drive: the highest write
// that counts is that of the bottom node, the device, not the format node's
// (a guest offset).
func TestHighestWrite(t *testing.T) {
	device := qmp.Blockstats{NodeName: "e-drive-scsi0", Stats: qmp.Stats{WrHighestOffset: 5 << 30}}
	format := qmp.Blockstats{NodeName: "f-drive-scsi0", Stats: qmp.Stats{WrHighestOffset: 30 << 30}, Parent: &device}
	throttled := []qmp.Blockstats{
		{QDev: "/machine/peripheral/virtio0/virtio-backend", Stats: qmp.Stats{WrHighestOffset: 1 << 30}},
		{QDev: "/machine/peripheral/scsi0", NodeName: "drive-scsi0", Stats: qmp.Stats{WrHighestOffset: 30 << 30}, Parent: &format},
	}
	if got := highestWrite(throttled, qmp.Block{QDev: "/machine/peripheral/scsi0"}); got != 5<<30 {
		t.Errorf("through a throttle node: %d, want %d", got, uint64(5<<30))
	}
	plain := []qmp.Blockstats{{Device: "d0", Stats: qmp.Stats{WrHighestOffset: 1 << 30}, Parent: &device}}
	if got := highestWrite(plain, qmp.Block{Device: "d0"}); got != 5<<30 {
		t.Errorf("qcow2 on a device: %d, want %d", got, uint64(5<<30))
	}
	if got := highestWrite(plain, qmp.Block{Device: "d1"}); got != 0 {
		t.Errorf("no stats: %d, want 0", got)
	}
}
