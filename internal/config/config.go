// Package config reads the agent's configuration file, TOML. Today it has the SPM's
// part; the agent's sections join it later. Unknown keys are errors, so that a typo
// is not a silent default. Settings that parse but make no sense are errors too:
// polls under 1ms, a scan_interval under 100ms, a max_lv_size of 0, an inbox
// without its outbox, an empty devices list.
//
//	[spm]
//	lvm = "/sbin/lvm"          # the lvm binary (default: lvm from PATH)
//	max_lv_size = "4TiB"       # per-domain default; a request above it is refused
//	reserve = "0"              # of each VG: never handed out
//	space_poll = "10ms"        # metadata header reads while requests wait for space
//	event_poll_min = "1ms"     # the mailbox's pace (internal/mailbox)
//	event_poll_max = "100ms"
//	scan_interval = "2s"
//
//	[[spm.domain]]
//	vg = "8adbc85e-e554-4ae0-b318-8a5465fe5fe1"
//	inbox = "/dev/8adbc85e-e554-4ae0-b318-8a5465fe5fe1/inbox"   # the default
//	outbox = "/dev/8adbc85e-e554-4ae0-b318-8a5465fe5fe1/outbox" # the default
//	devices = ["/dev/mapper/36001405a1b2c3d4"]                  # default: scan as lvm does
//	max_lv_size = "2TiB"       # overrides [spm]'s
//	reserve = "10GiB"
package config

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/BurntSushi/toml"

	"github.com/lvwatch/lvwatch/internal/agent"
	"github.com/lvwatch/lvwatch/internal/resume"
	"github.com/lvwatch/lvwatch/internal/size"
	"github.com/lvwatch/lvwatch/internal/spm"
)

// File is the configuration file.
type File struct {
	Agent Agent `toml:"agent"`
	SPM   SPM   `toml:"spm"`
}

// Agent is the [agent] section.
type Agent struct {
	HostID   int     `toml:"host_id"`
	SPM      bool    `toml:"spm"` // run the SPM in the agent's process ([spm]'s settings)
	Chunk    *Size   `toml:"chunk"`
	Trigger  *Size   `toml:"trigger"`
	Overhead float64 `toml:"overhead"`
	PinDir   string  `toml:"pin_dir"`
	StateDir string  `toml:"state_dir"`
	Status   string  `toml:"status_socket"`
	Metrics  string  `toml:"metrics"` // listen address: host:port, or a unix socket path; "" for none
	// QMP are the VMs' QMP sockets (globs) the agent resumes VMs through;
	// default resume.DefaultQMP, [] for none. QMPMonitors are sockets (globs)
	// of monitors the VMs were started with for lvwatch alone, held open for
	// their events; default none. Libvirt is libvirt's URI: default this
	// host's libvirt when one runs, "none" for none.
	QMP         *[]string     `toml:"qmp"`
	QMPMonitors []string      `toml:"qmp_monitors"`
	Libvirt     string        `toml:"libvirt"`
	Domains     []AgentDomain `toml:"domain"`
}

// AgentDomain is one [[agent.domain]].
type AgentDomain struct {
	VG         string   `toml:"vg"`
	Inbox      string   `toml:"inbox"`
	Outbox     string   `toml:"outbox"`
	Devices    []string `toml:"devices"`
	Chunk      *Size    `toml:"chunk"`
	Trigger    *Size    `toml:"trigger"`
	Raw        bool     `toml:"raw"`
	MaxRawSize *Size    `toml:"max_raw_size"`
}

// SPM is the [spm] section.
type SPM struct {
	LVM          string   `toml:"lvm"`
	MaxLVSize    *Size    `toml:"max_lv_size"`
	Reserve      *Size    `toml:"reserve"`
	SpacePoll    Duration `toml:"space_poll"`
	EventPollMin Duration `toml:"event_poll_min"`
	EventPollMax Duration `toml:"event_poll_max"`
	ScanInterval Duration `toml:"scan_interval"`
	Domains      []Domain `toml:"domain"`
}

// Domain is one [[spm.domain]].
type Domain struct {
	VG        string   `toml:"vg"`
	Inbox     string   `toml:"inbox"`
	Outbox    string   `toml:"outbox"`
	Devices   []string `toml:"devices"`
	MaxLVSize *Size    `toml:"max_lv_size"`
	Reserve   *Size    `toml:"reserve"`
	SpacePoll Duration `toml:"space_poll"`
}

// Size is a byte size written as a string: "4TiB", "512MiB", "4096".
type Size uint64

// UnmarshalText implements encoding.TextUnmarshaler.
func (s *Size) UnmarshalText(b []byte) error {
	n, err := size.Parse(string(b))
	*s = Size(n)
	return err
}

// Duration is a time.Duration written as a string: "50ms", "2s".
type Duration time.Duration

// UnmarshalText implements encoding.TextUnmarshaler.
func (d *Duration) UnmarshalText(b []byte) error {
	v, err := time.ParseDuration(string(b))
	if err == nil && v < 0 {
		err = fmt.Errorf("duration %q: negative", b)
	}
	*d = Duration(v)
	return err
}

// Parse parses a configuration file's text.
func Parse(text []byte) (*File, error) {
	var f File
	md, err := toml.Decode(string(text), &f)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	if und := md.Undecoded(); len(und) > 0 {
		keys := make([]string, len(und))
		for i, k := range und {
			keys[i] = k.String()
		}
		return nil, fmt.Errorf("config: unknown keys: %s", strings.Join(keys, ", "))
	}
	return &f, nil
}

// Load reads and parses the file at path.
func Load(path string) (*File, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	f, err := Parse(text)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}

// SPMConfig is the [spm] section as the SPM takes it, each domain with the
// section's defaults where it sets none. The SPM validates the rest at Start.
func (f *File) SPMConfig() (spm.Config, error) {
	if len(f.SPM.Domains) == 0 {
		return spm.Config{}, errors.New("config: [spm] has no [[spm.domain]]")
	}
	return f.SPM.config(f.SPM.Domains)
}

// AgentConfig is the [agent] section as the agent takes it, each domain with
// the section's policy where it sets none; with spm = true, the SPM's settings
// come from [spm], and its domains are [spm]'s or else the agent's.
func (f *File) AgentConfig() (agent.Config, error) {
	s := f.Agent
	if len(s.Domains) == 0 {
		return agent.Config{}, errors.New("config: [agent] has no [[agent.domain]]")
	}
	if s.HostID == 0 {
		return agent.Config{}, errors.New("config: [agent] needs host_id, this host's id in the domains' mailboxes (1..249)")
	}
	cfg := agent.Config{HostID: s.HostID, PinDir: s.PinDir, StateDir: s.StateDir, VMs: VMSources(s.QMP, s.QMPMonitors, s.Libvirt)}
	for _, d := range s.Domains {
		cfg.Domains = append(cfg.Domains, agent.Domain{
			VG: d.VG, Inbox: d.Inbox, Outbox: d.Outbox, Devices: d.Devices,
			Policy: agent.Policy{Chunk: uint64(orSize(d.Chunk, s.Chunk)), Trigger: uint64(orSize(d.Trigger, s.Trigger)), Overhead: s.Overhead},
			Raw:    d.Raw, MaxRawSize: uint64(orSize(d.MaxRawSize, nil)),
		})
	}
	if s.SPM {
		domains := f.SPM.Domains
		if len(domains) == 0 {
			for _, d := range s.Domains {
				domains = append(domains, Domain{VG: d.VG, Inbox: d.Inbox, Outbox: d.Outbox, Devices: d.Devices})
			}
		}
		sc, err := f.SPM.config(domains)
		if err != nil {
			return agent.Config{}, err
		}
		cfg.SPM = &sc
	}
	return cfg, nil
}

// VMSources are the ways to the host's VMs: QMP sockets matching patterns
// (resume.DefaultQMP when nil, none when empty), monitors of lvwatch's own
// matching monitors, and libvirt at uri ("" this host's when one runs, "none"
// for none).
func VMSources(patterns *[]string, monitors []string, uri string) []resume.Source {
	qmp := []string{resume.DefaultQMP}
	if patterns != nil {
		qmp = *patterns
	}
	var sources []resume.Source
	if len(monitors) > 0 {
		sources = append(sources, resume.NewMonitors(monitors, qmp))
	}
	if len(qmp) > 0 {
		sources = append(sources, resume.QMP{Patterns: qmp})
	}
	if uri != "none" {
		sources = append(sources, resume.Libvirt{URI: uri})
	}
	return sources
}

// config is the section's settings for domains, each with the section's
// defaults where it sets none.
func (s SPM) config(domains []Domain) (spm.Config, error) {
	if err := s.check(); err != nil {
		return spm.Config{}, err
	}
	cfg := spm.Config{LVM: s.LVM, EventPollMin: time.Duration(s.EventPollMin),
		EventPollMax: time.Duration(s.EventPollMax), ScanInterval: time.Duration(s.ScanInterval)}
	for _, d := range domains {
		poll := d.SpacePoll
		if poll == 0 {
			poll = s.SpacePoll
		}
		cfg.Domains = append(cfg.Domains, spm.DomainConfig{
			VG: d.VG, Inbox: d.Inbox, Outbox: d.Outbox, Devices: d.Devices,
			MaxLVSize: uint64(orSize(d.MaxLVSize, s.MaxLVSize)),
			Reserve:   uint64(orSize(d.Reserve, s.Reserve)),
			SpacePoll: time.Duration(poll),
		})
	}
	return cfg, nil
}

// Lower bounds of the pace settings: each poll reads shared storage, and a
// nanosecond is a busy loop on every host's storage path.
const (
	MinPoll         = time.Millisecond
	MinScanInterval = 100 * time.Millisecond
)

// check refuses settings that parse but make no sense.
func (s SPM) check() error {
	var errs []error
	minimum := func(key string, d Duration, least time.Duration) {
		if d != 0 && time.Duration(d) < least {
			errs = append(errs, fmt.Errorf("%s = %q: at least %s (or leave it out for the default)", key, time.Duration(d), least))
		}
	}
	nonzero := func(key string, sz *Size) {
		if sz != nil && *sz == 0 {
			errs = append(errs, fmt.Errorf("%s = \"0\": a request could never be served (leave it out for the default)", key))
		}
	}
	minimum("spm.space_poll", s.SpacePoll, MinPoll)
	minimum("spm.event_poll_min", s.EventPollMin, MinPoll)
	minimum("spm.event_poll_max", s.EventPollMax, MinPoll)
	minimum("spm.scan_interval", s.ScanInterval, MinScanInterval)
	if s.EventPollMin != 0 && s.EventPollMax != 0 && s.EventPollMax < s.EventPollMin {
		errs = append(errs, fmt.Errorf("spm.event_poll_max %s is below event_poll_min %s", time.Duration(s.EventPollMax), time.Duration(s.EventPollMin)))
	}
	nonzero("spm.max_lv_size", s.MaxLVSize)
	for i, d := range s.Domains {
		key := fmt.Sprintf("spm.domain[%d]", i)
		minimum(key+".space_poll", d.SpacePoll, MinPoll)
		nonzero(key+".max_lv_size", d.MaxLVSize)
		if (d.Inbox == "") != (d.Outbox == "") {
			errs = append(errs, fmt.Errorf("%s (vg %q): inbox and outbox go together (or neither, for the VG's own)", key, d.VG))
		}
		if d.Devices != nil && len(d.Devices) == 0 {
			errs = append(errs, fmt.Errorf("%s (vg %q): devices = []: leave it out to find the PVs by scanning", key, d.VG))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("config: %w", errors.Join(errs...))
	}
	return nil
}

// orSize returns the domain's size, or the section's, or 0 (the SPM's default).
func orSize(domain, section *Size) Size {
	switch {
	case domain != nil:
		return *domain
	case section != nil:
		return *section
	}
	return 0
}
