package uevent

import (
	"errors"
	"strings"
	"testing"
)

// Datagrams as the kernel formats them (kobject_uevent_env): the header, then
// ACTION, DEVPATH, SUBSYSTEM, the caller's extra keys (RESIZE, DM_COOKIE,
// DISK_MEDIA_CHANGE), the device's keys, SEQNUM, each ended by a NUL. Those of
// loop2, loop100 and bdi were received from kernel 6.18 in this package's tests;
// the partition and dm ones are written in the same format.
const (
	loopAttach = "change@/devices/virtual/block/loop2\x00ACTION=change\x00DEVPATH=/devices/virtual/block/loop2\x00SUBSYSTEM=block\x00MAJOR=7\x00MINOR=2\x00DEVNAME=loop2\x00DEVTYPE=disk\x00DISKSEQ=3732\x00SEQNUM=6441\x00"
	loopResize = "change@/devices/virtual/block/loop2\x00ACTION=change\x00DEVPATH=/devices/virtual/block/loop2\x00SUBSYSTEM=block\x00RESIZE=1\x00MAJOR=7\x00MINOR=2\x00DEVNAME=loop2\x00DEVTYPE=disk\x00DISKSEQ=3732\x00SEQNUM=6442\x00"
	loopMedia  = "change@/devices/virtual/block/loop2\x00ACTION=change\x00DEVPATH=/devices/virtual/block/loop2\x00SUBSYSTEM=block\x00DISK_MEDIA_CHANGE=1\x00MAJOR=7\x00MINOR=2\x00DEVNAME=loop2\x00DEVTYPE=disk\x00DISKSEQ=3732\x00SEQNUM=6444\x00"
	loopAdd    = "add@/devices/virtual/block/loop100\x00ACTION=add\x00DEVPATH=/devices/virtual/block/loop100\x00SUBSYSTEM=block\x00MAJOR=7\x00MINOR=100\x00DEVNAME=loop100\x00DEVTYPE=disk\x00DISKSEQ=3734\x00SEQNUM=6446\x00"
	loopRemove = "remove@/devices/virtual/block/loop100\x00ACTION=remove\x00DEVPATH=/devices/virtual/block/loop100\x00SUBSYSTEM=block\x00MAJOR=7\x00MINOR=100\x00DEVNAME=loop100\x00DEVTYPE=disk\x00DISKSEQ=3734\x00SEQNUM=6449\x00"
	bdiAdd     = "add@/devices/virtual/bdi/7:100\x00ACTION=add\x00DEVPATH=/devices/virtual/bdi/7:100\x00SUBSYSTEM=bdi\x00SEQNUM=6445\x00"
	loopPart   = "add@/devices/virtual/block/loop0/loop0p1\x00ACTION=add\x00DEVPATH=/devices/virtual/block/loop0/loop0p1\x00SUBSYSTEM=block\x00MAJOR=259\x00MINOR=0\x00DEVNAME=loop0p1\x00DEVTYPE=partition\x00PARTN=1\x00SEQNUM=812\x00"
	loopPartRm = "remove@/devices/virtual/block/loop0/loop0p1\x00ACTION=remove\x00DEVPATH=/devices/virtual/block/loop0/loop0p1\x00SUBSYSTEM=block\x00MAJOR=259\x00MINOR=0\x00DEVNAME=loop0p1\x00DEVTYPE=partition\x00PARTN=1\x00SEQNUM=815\x00"
	dmAdd      = "add@/devices/virtual/block/dm-3\x00ACTION=add\x00DEVPATH=/devices/virtual/block/dm-3\x00SUBSYSTEM=block\x00MAJOR=253\x00MINOR=3\x00DEVNAME=dm-3\x00DEVTYPE=disk\x00DISKSEQ=17\x00SEQNUM=4410\x00"
	dmResize   = "change@/devices/virtual/block/dm-3\x00ACTION=change\x00DEVPATH=/devices/virtual/block/dm-3\x00SUBSYSTEM=block\x00DM_COOKIE=4194304\x00RESIZE=1\x00MAJOR=253\x00MINOR=3\x00DEVNAME=dm-3\x00DEVTYPE=disk\x00DISKSEQ=17\x00SEQNUM=4415\x00"
	dmRemove   = "remove@/devices/virtual/block/dm-3\x00ACTION=remove\x00DEVPATH=/devices/virtual/block/dm-3\x00SUBSYSTEM=block\x00DM_COOKIE=4194305\x00MAJOR=253\x00MINOR=3\x00DEVNAME=dm-3\x00DEVTYPE=disk\x00DISKSEQ=17\x00SEQNUM=4420\x00"
)

func TestParse(t *testing.T) {
	for _, tc := range []struct {
		name, msg                        string
		action, devpath, subsys, devname string
		devtype                          string
		major, minor                     uint32
		seqnum                           uint64
		resize                           bool
		env                              map[string]string // some of the keys
	}{
		{"loop attach", loopAttach, "change", "/devices/virtual/block/loop2", "block", "loop2", "disk", 7, 2, 6441, false, map[string]string{"DISKSEQ": "3732"}},
		{"loop resize", loopResize, "change", "/devices/virtual/block/loop2", "block", "loop2", "disk", 7, 2, 6442, true, nil},
		{"loop detach", loopMedia, "change", "/devices/virtual/block/loop2", "block", "loop2", "disk", 7, 2, 6444, false, map[string]string{"DISK_MEDIA_CHANGE": "1"}},
		{"loop add", loopAdd, "add", "/devices/virtual/block/loop100", "block", "loop100", "disk", 7, 100, 6446, false, nil},
		{"loop remove", loopRemove, "remove", "/devices/virtual/block/loop100", "block", "loop100", "disk", 7, 100, 6449, false, nil},
		{"bdi, no device number", bdiAdd, "add", "/devices/virtual/bdi/7:100", "bdi", "", "", 0, 0, 6445, false, nil},
		{"partition add", loopPart, "add", "/devices/virtual/block/loop0/loop0p1", "block", "loop0p1", "partition", 259, 0, 812, false, map[string]string{"PARTN": "1"}},
		{"partition remove", loopPartRm, "remove", "/devices/virtual/block/loop0/loop0p1", "block", "loop0p1", "partition", 259, 0, 815, false, nil},
		{"dm add", dmAdd, "add", "/devices/virtual/block/dm-3", "block", "dm-3", "disk", 253, 3, 4410, false, nil},
		{"dm resume, new size", dmResize, "change", "/devices/virtual/block/dm-3", "block", "dm-3", "disk", 253, 3, 4415, true, map[string]string{"DM_COOKIE": "4194304"}},
		{"dm remove", dmRemove, "remove", "/devices/virtual/block/dm-3", "block", "dm-3", "disk", 253, 3, 4420, false, nil},
		{"no trailing NUL", strings.TrimSuffix(loopAdd, "\x00"), "add", "/devices/virtual/block/loop100", "block", "loop100", "disk", 7, 100, 6446, false, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := Parse([]byte(tc.msg))
			if err != nil {
				t.Fatal(err)
			}
			if e.Action != tc.action || e.DevPath != tc.devpath || e.Subsystem != tc.subsys ||
				e.DevName != tc.devname || e.DevType != tc.devtype || e.Major != tc.major ||
				e.Minor != tc.minor || e.Seqnum != tc.seqnum || e.Resize() != tc.resize {
				t.Errorf("Parse = %+v (resize %v), want %+v", e, e.Resize(), tc)
			}
			for k, v := range tc.env {
				if e.Env[k] != v {
					t.Errorf("Env[%s] = %q, want %q", k, e.Env[k], v)
				}
			}
			if e.Env["ACTION"] != tc.action || e.Env["SEQNUM"] == "" {
				t.Errorf("Env lacks the standard keys: %v", e.Env)
			}
		})
	}
}

func TestParseRejects(t *testing.T) {
	for _, tc := range []struct{ name, msg, want string }{
		{"empty", "", "empty"},
		{"no @", "change /devices/virtual/block/loop2\x00ACTION=change\x00", "no '@'"},
		{"no action", "@/devices/virtual/block/loop2\x00ACTION=\x00DEVPATH=/devices/virtual/block/loop2\x00", "lacks"},
		{"action disagrees", strings.Replace(loopAttach, "ACTION=change", "ACTION=remove", 1), "ACTION"},
		{"devpath disagrees", strings.Replace(loopAttach, "DEVPATH=/devices/virtual/block/loop2", "DEVPATH=/devices/virtual/block/loop3", 1), "DEVPATH"},
		{"no ACTION key", strings.Replace(loopAttach, "ACTION=change\x00", "", 1), "ACTION"},
		{"no DEVPATH key", strings.Replace(loopAttach, "DEVPATH=/devices/virtual/block/loop2\x00", "", 1), "DEVPATH"},
		{"MAJOR not a number", strings.Replace(loopAttach, "MAJOR=7", "MAJOR=seven", 1), "MAJOR"},
		{"MINOR not a number", strings.Replace(loopAttach, "MINOR=2", "MINOR=-2", 1), "MINOR"},
		{"MINOR too big", strings.Replace(loopAttach, "MINOR=2", "MINOR=4294967296", 1), "MINOR"},
		{"MAJOR alone", strings.Replace(loopAttach, "MINOR=2\x00", "", 1), "MAJOR and MINOR"},
		{"SEQNUM not a number", strings.Replace(loopAttach, "SEQNUM=6441", "SEQNUM=x", 1), "SEQNUM"},
		{"field without =", strings.Replace(loopAttach, "DEVTYPE=disk", "DEVTYPE", 1), "KEY=VALUE"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e, err := Parse([]byte(tc.msg))
			if err == nil {
				t.Fatalf("Parse(%q) = %+v, want an error", tc.msg, e)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Parse(%q): %v, want it to mention %q", tc.msg, err, tc.want)
			}
		})
	}
}

// Dev is the kernel's dev_t encoding, as stat's st_rdev gives it.
func TestDev(t *testing.T) {
	for _, tc := range []struct {
		major, minor uint32
		want         uint64
	}{{7, 2, 0x702}, {253, 3, 0xfd03}, {259, 300, 0x11032c}} {
		if got := (Event{Major: tc.major, Minor: tc.minor}).Dev(); got != tc.want {
			t.Errorf("%d:%d Dev() = %#x, want %#x", tc.major, tc.minor, got, tc.want)
		}
	}
}

// udev's rebroadcasts start with "libudev\0" and a binary header.
func TestParseLibudev(t *testing.T) {
	msg := []byte("libudev\x00\xfe\xed\xca\xfe\x28\x00\x00\x00ACTION=add\x00DEVPATH=/devices/virtual/block/loop2\x00")
	if _, err := Parse(msg); !errors.Is(err, ErrNotKernel) {
		t.Errorf("Parse(libudev message) = %v, want ErrNotKernel", err)
	}
}

// FuzzParse's seeds are the datagrams above and a few broken ones, in
// testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Fuzz(func(t *testing.T, msg []byte) {
		e, err := Parse(msg)
		if err != nil {
			return
		}
		// What parses agrees with its header and with its keys.
		header, _, _ := strings.Cut(string(msg), "\x00")
		if header != e.Action+"@"+e.DevPath {
			t.Errorf("header %q, parsed %q@%q", header, e.Action, e.DevPath)
		}
		if e.Env["ACTION"] != e.Action || e.Env["DEVPATH"] != e.DevPath || e.Env["SUBSYSTEM"] != e.Subsystem {
			t.Errorf("fields %+v disagree with Env", e)
		}
		_ = e.Dev()
	})
}
