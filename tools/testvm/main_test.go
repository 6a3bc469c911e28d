package main

import (
	"io"
	"slices"
	"strings"
	"testing"

	"github.com/lvwatch/lvwatch/internal/testvm"
)

func TestParseDrive(t *testing.T) {
	for spec, want := range map[string]testvm.Drive{
		"/dev/vg/lv":                                   {Path: "/dev/vg/lv"},
		"/dev/vg/lv,werror=stop":                       {Path: "/dev/vg/lv", Werror: "stop"},
		"/dev/vg/lv,werror=enospc,aio=threads":         {Path: "/dev/vg/lv", Werror: "enospc", AIO: "threads"},
		"/tmp/a.raw,format=raw,cache=unsafe":           {Path: "/tmp/a.raw", Format: "raw", Cache: "unsafe"},
		"/dev/loop0,shared,offset=67108864,aio=native": {Path: "/dev/loop0", Shared: true, Offset: 64 << 20, AIO: "native"},
	} {
		got, err := parseDrive(spec)
		if err != nil || got != want {
			t.Errorf("parseDrive(%q) = %+v, %v; want %+v", spec, got, err, want)
		}
	}
	for _, bad := range []string{
		"",
		",werror=stop",
		"/dev/x,werror=never",
		"/dev/x,werror",
		"/dev/x,werror=stop,werror=report",
		"/dev/x,aio=posix",
		"/dev/x,offset=1000",
		"/dev/x,offset=-1048576",
		"/dev/x,shared=yes",
		"/dev/x,if=ide",
		"/dev/x,",
	} {
		if d, err := parseDrive(bad); err == nil {
			t.Errorf("parseDrive(%q): accepted as %+v", bad, d)
		}
	}
}

func FuzzParseDrive(f *testing.F) {
	f.Add("/dev/vg/lv,werror=stop,aio=native")
	f.Add("/dev/loop0,shared,offset=1048576,format=raw,cache=none")
	f.Fuzz(func(t *testing.T, spec string) {
		d, err := parseDrive(spec)
		if err != nil {
			return
		}
		if d.Path == "" || strings.Contains(d.Path, ",") || d.Offset < 0 || d.Offset%(1<<20) != 0 {
			t.Fatalf("parseDrive(%q) accepted %+v", spec, d)
		}
	})
}

func TestParseRun(t *testing.T) {
	o, err := parseRun([]string{"--drive", "/dev/a,werror=stop", "--drive", "/dev/b", "--data-mib", "96",
		"--qmp", "/run/vms/a.qmp", "--qmp", "/tmp/b.qmp", "--machine", "microvm", "--kit", "/vmtest/kit"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if len(o.vm.Drives) != 2 || o.vm.Drives[0].Werror != "stop" || o.vm.DataMiB != 96 || o.vm.Machine != testvm.MicroVM ||
		!slices.Equal(o.vm.QMP, []string{"/run/vms/a.qmp", "/tmp/b.qmp"}) || o.vm.Monitors != 1 || o.kit != "/vmtest/kit" {
		t.Errorf("got %+v", o)
	}
	for _, bad := range [][]string{
		{},                             // no drive
		{"--drive", "/dev/a", "stray"}, // an argument
		{"--drive", "/dev/a", "--data-mib", "0"},
		{"--drive", "/dev/a", "--timeout", "0s"},
		{"--drive", "/dev/a,bad=1"},
		{"--drive", "/dev/a", "--machine", "pc"},
	} {
		if _, err := parseRun(bad, io.Discard); err == nil {
			t.Errorf("parseRun(%q): no error", bad)
		}
	}
}

func TestLineWatcher(t *testing.T) {
	found := 0
	w := newLineWatcher("testvm: writing ", func() { found++ })
	for _, piece := range []string{"[ 1.0] boot\r\ntestvm: wri", "ting 1048576 bytes\r", "\ntestvm: writing again\n"} {
		w.Write([]byte(piece))
	}
	if found != 1 {
		t.Errorf("found %d times, want once", found)
	}
}
