package lvm_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lvwatch/lvwatch/internal/lvm"
	"github.com/lvwatch/lvwatch/internal/lvm/lvmtest"
)

func TestFilter(t *testing.T) {
	f, err := lvm.ParseFilter([]string{"a|^/dev/sd[ab]$|", "r(^/dev/sd)", "a{^/dev/disk/by-id/keep}", "r/.*/"})
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		names []string
		want  bool
	}{
		{[]string{"/dev/sda"}, true},
		{[]string{"/dev/sdc"}, false},
		{[]string{"/dev/sdc", "/dev/disk/by-id/keep-1"}, true}, // another name accepted: lvm accepts
		{[]string{"/dev/vda"}, false},
	} {
		if got := f.Accepts(tc.names); got != tc.want {
			t.Errorf("%v: accepted %v, want %v", tc.names, got, tc.want)
		}
	}
	none, _ := lvm.ParseFilter([]string{"r|^/dev/sd|"})
	if !none.Accepts([]string{"/dev/vda"}) {
		t.Error("a name no pattern matches is rejected")
	}
	for _, bad := range []string{"x|a|", "a|a", "a(a(", "a|[|", "a"} {
		if _, err := lvm.ParseFilter([]string{bad}); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestParseDevicesFile(t *testing.T) {
	text := "# LVM uses devices listed in this file.\nVERSION=1.1.2\n" +
		"IDTYPE=sys_wwid IDNAME=naa.600140512345 DEVNAME=/dev/sdb PVID=DnpfqCA2rE6bj3y69GLrGE5kUcrCclOy\n" +
		"IDTYPE=devname IDNAME=/dev/sdc1 DEVNAME=/dev/sdc1 PVID=. PART=1\n"
	ids, err := lvm.ParseDevicesFile([]byte(text))
	if err != nil {
		t.Fatal(err)
	}
	if len(ids) != 2 || ids[0].Type != "sys_wwid" || ids[0].Name != "naa.600140512345" || ids[1].Part != 1 {
		t.Errorf("entries %+v", ids)
	}
	for _, bad := range []string{"IDTYPE=devname PVID=x\n", "IDTYPE=devname IDNAME=/dev/a PART=-1\n", "IDTYPE=devname oops\n"} {
		if _, err := lvm.ParseDevicesFile([]byte(bad)); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// TestScanSelectsAsLVM: a scan reads the devices lvm would read. A copy of a
// PV's label and metadata on a second device makes the PV ambiguous to a scan
// of every device; lvm's filter, or its devices file, leave the copy out.
func TestScanSelectsAsLVM(t *testing.T) {
	env := lvmtest.New(t, 2, 64<<20)
	vg := fmt.Sprintf("lvwatch-t-select-%d", os.Getpid())
	pv, copyDev := env.Paths()[0], env.Paths()[1]
	env.CreateVG(vg, []string{pv}, nil, []string{"-s", "1m"})
	env.MustRun("lvcreate", "-q", "-n", "lv", "-l", "2", "-Zn", "-Wn", vg)
	head := make([]byte, 1<<20)
	src, err := os.Open(pv)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	if _, err := src.ReadAt(head, 0); err != nil {
		t.Fatal(err)
	}
	writeHead := func(b []byte) {
		t.Helper()
		w, err := os.OpenFile(copyDev, os.O_WRONLY|os.O_SYNC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer w.Close()
		if _, err := w.WriteAt(b, 0); err != nil {
			t.Fatal(err)
		}
	}
	writeHead(head)
	t.Cleanup(func() { writeHead(make([]byte, len(head))) }) // before lvmtest's vgremove

	scan := func(t *testing.T, conf string, files map[string]string) *lvm.VG {
		t.Helper()
		dir := t.TempDir()
		files["lvm.conf"] = conf
		for name, text := range files {
			os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o700)
			if err := os.WriteFile(filepath.Join(dir, name), []byte(text), 0o600); err != nil {
				t.Fatal(err)
			}
		}
		t.Setenv("LVM_SYSTEM_DIR", dir)
		cfg, err := lvm.LoadHostConfig()
		if err != nil {
			t.Fatal(err)
		}
		got, err := lvm.ScanVG(t.Context(), vg, cfg)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	t.Run("everything", func(t *testing.T) {
		got := scan(t, "", map[string]string{})
		if len(got.PVs[0].Duplicates) != 1 {
			t.Errorf("PV on %s, duplicates %v: want the copy seen", got.PVs[0].Device, got.PVs[0].Duplicates)
		}
	})
	only := func(t *testing.T, got *lvm.VG) {
		t.Helper()
		if p := got.PVs[0]; p.Device != pv || len(p.Duplicates) != 0 {
			t.Errorf("PV on %s, duplicates %v; want %s only\nwarnings %s", p.Device, p.Duplicates, pv, strings.Join(got.Warnings, "\n"))
		}
	}
	t.Run("filter", func(t *testing.T) {
		only(t, scan(t, fmt.Sprintf("devices {\n\tfilter = [ \"r|^%s$|\" ]\n}\n", copyDev), map[string]string{}))
	})
	t.Run("global_filter", func(t *testing.T) {
		only(t, scan(t, fmt.Sprintf("devices/global_filter = [ \"r|^%s$|\", \"a|.*|\" ]\n", copyDev), map[string]string{}))
	})
	t.Run("devices file", func(t *testing.T) {
		// With a devices file, lvm ignores the filters: this one would reject all.
		only(t, scan(t, "devices {\n\tuse_devicesfile = 1\n\tfilter = [ \"r|.*|\" ]\n}\n", map[string]string{
			"devices/system.devices": fmt.Sprintf("VERSION=1.1.1\nIDTYPE=devname IDNAME=%s DEVNAME=%s PVID=.\n", pv, pv),
		}))
	})
}
