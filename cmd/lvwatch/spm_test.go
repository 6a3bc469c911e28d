package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lvwatch/lvwatch/internal/lvm/lvmtest"
	"github.com/lvwatch/lvwatch/internal/spm"
	"github.com/lvwatch/lvwatch/internal/spm/spmtest"
)

func TestSPMUsage(t *testing.T) {
	for _, args := range [][]string{
		{"spm"},
		{"spm", "--domain", "x", "--inbox", "a"},
		{"spm", "--config", "f", "--domain", "x"},
		{"spm", "--domain", "x", "--reserve", "lots"},
	} {
		if _, stderr, code := lvwatch(t, args...); code != 2 {
			t.Errorf("lvwatch %q: exit %d, want 2; stderr:\n%s", args, code, stderr)
		}
	}
}

// lvwatch spm serves a domain from its flags, from a configuration file, then
// from --domain alone (the VG's own mailbox LVs, the PVs found by scanning):
// `lvwatch extend` gets its grant, a request for an unknown LV fails, the status
// snapshot counts them, and SIGTERM ends it cleanly.
func TestSPMCommand(t *testing.T) {
	env := lvmtest.New(t, 1, 256<<20)
	spmtest.Use(t, env)
	const vg, lv = "0f5d3c39-6a43-4c1e-9a7b-2d2f2b7f6c11", "5b2e9f6a-1c3d-4e5f-8a9b-0c1d2e3f4a5b"
	env.CreateVG(vg, env.Paths(), nil, []string{"-s", "1m"})
	env.MustRun("lvcreate", "-q", "-n", lv, "-L", "8m", vg)
	dir := t.TempDir()
	inbox, outbox, status := filepath.Join(dir, "inbox"), filepath.Join(dir, "outbox"), filepath.Join(dir, "status.json")
	if _, stderr, code := lvwatch(t, "mailbox", "init", "--inbox", inbox, "--outbox", outbox, "--create"); code != 0 {
		t.Fatalf("mailbox init: %s", stderr)
	}
	conf := filepath.Join(dir, "lvwatch.toml")
	if err := os.WriteFile(conf, []byte("[spm]\nreserve = \"16MiB\"\n[[spm.domain]]\nvg = \""+vg+"\"\ninbox = \""+inbox+
		"\"\noutbox = \""+outbox+"\"\ndevices = [\""+env.Paths()[0]+"\"]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	extend := func(volume string, sizeMiB string) int {
		_, stderr, code := lvwatch(t, "extend", "--inbox", inbox, "--outbox", outbox, "--host-id", "4",
			"--domain", vg, "--volume", volume, "--size-mib", sizeMiB, "--timeout", "30s")
		t.Logf("extend %s to %s MiB: exit %d\n%s", volume, sizeMiB, code, stderr)
		return code
	}
	// The VG's own inbox and outbox LVs, as activation names them: links to the
	// volumes here (activation is off in lvmtest).
	vgDir := filepath.Join("/dev", vg)
	os.RemoveAll(vgDir)
	if err := os.Mkdir(vgDir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(vgDir) })
	for _, v := range []string{inbox, outbox} {
		if err := os.Symlink(v, filepath.Join(vgDir, filepath.Base(v))); err != nil {
			t.Fatal(err)
		}
	}
	for i, args := range [][]string{
		{"--domain", vg, "--inbox", inbox, "--outbox", outbox, "--devices", env.Paths()[0], "--status", status},
		{"--config", conf, "--status", status},
		{"--domain", vg, "--status", status}, // /dev/VG/inbox and outbox; the PVs found by scanning
	} {
		cmd := exec.Command(lvwatchBin, append([]string{"spm"}, args...)...)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		size := []string{"24", "40", "48"}[i]
		if code := extend(lv, size); code != 0 {
			t.Errorf("extend to %s MiB: exit %d", size, code)
		}
		if code := extend("00000000-0000-0000-0000-000000000001", "16"); code != 1 {
			t.Errorf("extend of an unknown LV: exit %d, want 1", code)
		}
		var st spm.Status
		deadline := time.Now().Add(30 * time.Second)
		for st.Domains == nil || st.Domains[0].Refused != 1 {
			if time.Now().After(deadline) {
				t.Fatalf("status snapshot %+v", st)
			}
			time.Sleep(10 * time.Millisecond)
			if b, err := os.ReadFile(status); err == nil {
				json.Unmarshal(b, &st)
			}
		}
		if d := st.Domains[0]; d.Extended != 1 || d.VG != vg {
			t.Errorf("status %+v", d)
		}
		cmd.Process.Signal(syscall.SIGTERM)
		if err := cmd.Wait(); err != nil {
			t.Errorf("spm after SIGTERM: %v\n%s", err, stderr.String())
		}
		os.Remove(status)
	}
	rows := env.MustReport("lvs", "-o", "lv_size", vg+"/"+lv)
	if len(rows) != 1 || rows[0]["lv_size"] != "98304" {
		t.Errorf("LV size %v sectors, want 48 MiB", rows)
	}
}
