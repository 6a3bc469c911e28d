package testvm

import (
	"reflect"
	"slices"
	"testing"
)

func TestParseReport(t *testing.T) {
	console := "[    0.1] kernel noise\r\n" +
		"testvm: drive 1 vdb failed: write at 16777216: input/output error\r\n" +
		"testvm: drive 0 vda verified 33554432 bytes at offset 0\r\n" +
		"testvm: drive 7 vdh verified 1 bytes at offset 0\r\n" + // no such drive
		"testvm: done\r\n"
	want := Result{Done: true, Drives: []DriveResult{
		{Device: "vda", Verified: true, Bytes: 32 << 20},
		{Device: "vdb", Error: "write at 16777216: input/output error"},
		{},
	}}
	if got := ParseReport(console, 3); !reflect.DeepEqual(got, want) {
		t.Errorf("got %+v\nwant %+v", got, want)
	}
	if got := ParseReport("testvm: drive 0 vda verified 1 bytes at offset 0\n", 1); got.Done {
		t.Error("done without the line that says so")
	}
}

func FuzzParseReport(f *testing.F) {
	f.Add("testvm: drive 0 vda verified 33554432 bytes at offset 0\ntestvm: done\n", 2)
	f.Add("testvm: drive 99999999999999999999 vda failed: x\n", 1)
	f.Fuzz(func(t *testing.T, console string, drives int) {
		if drives < 0 || drives > 26 {
			return
		}
		if r := ParseReport(console, drives); len(r.Drives) != drives {
			t.Fatalf("%d drives, want %d", len(r.Drives), drives)
		}
	})
}

func TestDriveQEMUArgs(t *testing.T) {
	d := Drive{Path: "/dev/loop7", Werror: "stop"}.withDefaults()
	want := []string{"-drive", "file=/dev/loop7,format=qcow2,if=none,id=d2,cache=none,aio=native,werror=stop", "-device", "virtio-blk-pci,drive=d2"}
	if got := d.QEMUArgs(2); !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	d = Drive{Path: "/tmp/a,b", Format: "raw", Cache: "unsafe", Shared: true}.withDefaults()
	want = []string{"-drive", "file=/tmp/a,,b,format=raw,if=none,id=d0,cache=unsafe,file.locking=off", "-device", "virtio-blk-pci,drive=d0,share-rw=on"}
	if got := d.QEMUArgs(0); !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
}
