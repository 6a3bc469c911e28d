package config

import (
	"strings"
	"testing"
	"time"
)

const example = `
[spm]
lvm = "/sbin/lvm"
max_lv_size = "4TiB"
reserve = "1GiB"
space_poll = "20ms"
scan_interval = "2s"

[[spm.domain]]
vg = "8adbc85e-e554-4ae0-b318-8a5465fe5fe1"
devices = ["/dev/mapper/a", "/dev/mapper/b"]
reserve = "10GiB"

[[spm.domain]]
vg = "d772f1c6-3ebb-43c3-a42e-73fcd8255a5f"
inbox = "/dev/x/inbox"
outbox = "/dev/x/outbox"
max_lv_size = "1TiB"
space_poll = "1s"
`

func TestSPMConfig(t *testing.T) {
	f, err := Parse([]byte(example))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := f.SPMConfig()
	if err != nil {
		t.Fatal(err)
	}
	if cfg.LVM != "/sbin/lvm" || cfg.ScanInterval != 2*time.Second || len(cfg.Domains) != 2 {
		t.Fatalf("%+v", cfg)
	}
	a, b := cfg.Domains[0], cfg.Domains[1]
	if a.MaxLVSize != 4<<40 || a.Reserve != 10<<30 || a.SpacePoll != 20*time.Millisecond || len(a.Devices) != 2 || a.Inbox != "" {
		t.Errorf("first domain (section defaults, its own reserve): %+v", a)
	}
	if b.MaxLVSize != 1<<40 || b.Reserve != 1<<30 || b.SpacePoll != time.Second || b.Inbox != "/dev/x/inbox" || b.Devices != nil {
		t.Errorf("second domain (its own maximum and poll): %+v", b)
	}
}

func TestParseErrors(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"[spm]\nmax_lv_sise = \"1GiB\"\n", "unknown keys: spm.max_lv_sise"},
		{"[spm]\nreserve = \"lots\"\n", "reserve"},
		{"[spm]\nspace_poll = \"-1s\"\n", "negative"},
		{"[spm\n", "config"},
	} {
		_, err := Parse([]byte(tc.text))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error with %q", tc.text, err, tc.want)
		}
	}
	const vg = "[[spm.domain]]\nvg = \"8adbc85e-e554-4ae0-b318-8a5465fe5fe1\"\n"
	for _, tc := range []struct{ text, want string }{
		{"[spm]\nspace_poll = \"1ns\"\n" + vg, "spm.space_poll = \"1ns\": at least 1ms"},
		{"[spm]\nevent_poll_min = \"1ns\"\n" + vg, "spm.event_poll_min"},
		{"[spm]\nevent_poll_max = \"999us\"\n" + vg, "spm.event_poll_max"},
		{"[spm]\nevent_poll_min = \"50ms\"\nevent_poll_max = \"10ms\"\n" + vg, "below event_poll_min"},
		{"[spm]\nscan_interval = \"1ns\"\n" + vg, "spm.scan_interval = \"1ns\": at least 100ms"},
		{"[spm]\nmax_lv_size = \"0\"\n" + vg, "spm.max_lv_size = \"0\""},
		{"[spm]\n" + vg + "max_lv_size = \"0\"\n", "spm.domain[0].max_lv_size"},
		{"[spm]\n" + vg + "space_poll = \"10us\"\n", "spm.domain[0].space_poll"},
		{"[spm]\n" + vg + "inbox = \"/dev/x/inbox\"\n", "inbox and outbox go together"},
		{"[spm]\n" + vg + "outbox = \"/dev/x/outbox\"\n", "inbox and outbox go together"},
		{"[spm]\n" + vg + "devices = []\n", "devices = []"},
	} {
		f, err := Parse([]byte(tc.text))
		if err != nil {
			t.Fatalf("%q: %v", tc.text, err)
		}
		if _, err := f.SPMConfig(); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error with %q", tc.text, err, tc.want)
		}
	}
	f, err := Parse([]byte("[spm]\n"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.SPMConfig(); err == nil {
		t.Error("no domain: no error")
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte(example))
	f.Add([]byte("[spm]\nreserve = \"1.5GiB\"\n[[spm.domain]]\nvg = \"x\"\n"))
	f.Fuzz(func(t *testing.T, text []byte) {
		if file, err := Parse(text); err == nil {
			file.SPMConfig()
		}
	})
}

// The example in deploy/ documents every knob: it must parse, with the values it shows.
func TestDeployExample(t *testing.T) {
	f, err := Load("../../deploy/lvwatch.toml")
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := f.SPMConfig()
	if err != nil {
		t.Fatal(err)
	}
	if len(cfg.Domains) != 1 || cfg.EventPollMax != 100*time.Millisecond {
		t.Fatalf("%+v", cfg)
	}
	if d := cfg.Domains[0]; d.MaxLVSize != 2<<40 || d.Reserve != 10<<30 || len(d.Devices) != 1 {
		t.Errorf("domain %+v", d)
	}
	ac, err := f.AgentConfig()
	if err != nil {
		t.Fatal(err)
	}
	if ac.HostID != 1 || ac.SPM != nil || len(ac.Domains) != 1 || f.Agent.Metrics != "127.0.0.1:9753" {
		t.Fatalf("agent %+v", ac)
	}
	if p := ac.Domains[0].Policy; p.Chunk != 2<<30 || p.Trigger != 1<<30 || p.Overhead != 1.1 {
		t.Errorf("domain policy %+v", p)
	}
}

// An agent with spm = true and no [[spm.domain]] serves its own domains with
// [spm]'s settings; [agent] without host_id or domains is refused.
func TestAgentConfig(t *testing.T) {
	f, err := Parse([]byte(`
[agent]
host_id = 7
spm = true
chunk = "256MiB"
[[agent.domain]]
vg = "8adbc85e-e554-4ae0-b318-8a5465fe5fe1"
trigger = "128MiB"
[spm]
reserve = "1GiB"
`))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := f.AgentConfig()
	if err != nil {
		t.Fatal(err)
	}
	if p := cfg.Domains[0].Policy; cfg.HostID != 7 || p.Chunk != 256<<20 || p.Trigger != 128<<20 {
		t.Errorf("agent %+v", cfg)
	}
	if cfg.SPM == nil || len(cfg.SPM.Domains) != 1 || cfg.SPM.Domains[0].VG != cfg.Domains[0].VG || cfg.SPM.Domains[0].Reserve != 1<<30 {
		t.Errorf("co-located SPM %+v", cfg.SPM)
	}
	for _, bad := range []string{
		"[agent]\nhost_id = 1\n",
		"[agent]\n[[agent.domain]]\nvg = \"8adbc85e-e554-4ae0-b318-8a5465fe5fe1\"\n",
		"[agent]\nhost_id = 1\nchunks = \"1GiB\"\n",
	} {
		f, err := Parse([]byte(bad))
		if err == nil {
			_, err = f.AgentConfig()
		}
		if err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

// [agent]'s qmp, qmp_monitors and libvirt choose the ways to the VMs: by
// default Proxmox VE's monitors, visited, and this host's libvirt.
func TestVMSources(t *testing.T) {
	for _, tc := range []struct{ toml, want string }{
		{"", "qmp /run/qemu-server/*.qmp|libvirt (this host's)"},
		{"qmp = []\nlibvirt = \"none\"\n", ""},
		{"qmp_monitors = [\"/run/lvwatch/qmp/*.sock\"]\nlibvirt = \"none\"\n", "qmp monitors /run/lvwatch/qmp/*.sock|qmp /run/qemu-server/*.qmp"},
	} {
		f, err := Parse([]byte("[agent]\nhost_id = 1\n" + tc.toml + "[[agent.domain]]\nvg = \"8adbc85e-e554-4ae0-b318-8a5465fe5fe1\"\n"))
		if err != nil {
			t.Fatal(err)
		}
		cfg, err := f.AgentConfig()
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, src := range cfg.VMs {
			got = append(got, src.String())
		}
		if strings.Join(got, "|") != tc.want {
			t.Errorf("%q: sources %q, want %q", tc.toml, got, tc.want)
		}
	}
}
