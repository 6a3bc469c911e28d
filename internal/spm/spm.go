package spm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/mailbox"
)

// Config configures an SPM.
type Config struct {
	Domains []DomainConfig
	LVM     string // the lvm binary; "" runs lvm from PATH
	Log     zerolog.Logger

	// The mailbox's pace (mailbox.SPMConfig); zero takes its defaults.
	EventPollMin, EventPollMax, ScanInterval time.Duration
	IgnoreSignatures                         bool // open mailbox volumes that carry a signature (tests on files)
}

// DomainConfig is one storage domain the SPM serves.
type DomainConfig struct {
	VG            string   // the domain UUID, lowercase
	Inbox, Outbox string   // both "": the VG's inbox and outbox LVs (/dev/VG/inbox); domains naming the same volumes share them (see the package doc)
	Devices       []string // the PVs LVM may see (--devices); nil: found by scanning as lvm would
	MaxLVSize     uint64   // bytes; 0: DefaultMaxLVSize
	Reserve       uint64   // bytes of the VG the SPM never hands out
	// SpacePoll is how often the VG's metadata header is read while requests wait
	// for space: one 512-byte read, no LVM command.
	SpacePoll time.Duration
}

// Defaults of DomainConfig.
const (
	DefaultMaxLVSize = 16 << 40
	DefaultSpacePoll = 10 * time.Millisecond
)

// maxPending is every slot of every host: the mailbox hands over at most this many
// unanswered requests, so requests waiting for space never keep others from the handler.
const maxPending = mailbox.MaxHostID * mailbox.MessagesPerMbox

// SPM serves extend requests of its domains: one mailbox per inbox/outbox pair, one
// worker per domain running LVM through its own lvm shell.
type SPM struct {
	log       zerolog.Logger
	mailboxes []*mailboxRoute
	domains   []*domain
	unknown   atomic.Uint64 // requests for a domain this SPM does not serve

	closeOnce sync.Once
	closeErr  error
}

// mailboxRoute is one mailbox and the domains whose requests come through it.
type mailboxRoute struct {
	inbox, outbox string
	outboxID      volumeID
	spm           *mailbox.SPM
	domains       map[string]*domain
	owner         *SPM
}

// HandleExtend implements mailbox.Handler: routes the request to its domain.
func (r *mailboxRoute) HandleExtend(ctx context.Context, req mailbox.Request, reply *mailbox.Reply) {
	d := r.domains[req.Domain.String()]
	if d == nil {
		r.owner.unknown.Add(1)
		reply.Fail(refuse("domain %s: not served by this SPM (volume %s, %d MiB)", req.Domain, req.Volume, req.SizeMiB))
		return
	}
	d.enqueue(ctx, req, reply)
}

// Start validates cfg, starts a worker per domain and opens the mailboxes.
func Start(cfg Config) (*SPM, error) {
	if len(cfg.Domains) == 0 {
		return nil, errors.New("spm: no domain to serve")
	}
	lvmPath := cfg.LVM
	if lvmPath == "" {
		lvmPath = "lvm"
	}
	s := &SPM{log: cfg.Log.With().Str("component", "spm").Logger()}
	routes := map[volumeID]*mailboxRoute{} // by inbox
	outboxes := map[volumeID]volumeID{}    // outbox → its inbox
	for _, dc := range cfg.Domains {
		dc, err := dc.withDefaults()
		if err != nil {
			return nil, fmt.Errorf("spm: %w", err)
		}
		if slices.ContainsFunc(s.domains, func(d *domain) bool { return d.cfg.VG == dc.VG }) {
			return nil, fmt.Errorf("spm: domain %s configured twice", dc.VG)
		}
		in, err := identify(dc.Inbox)
		if err != nil {
			return nil, fmt.Errorf("spm: domain %s: inbox: %w", dc.VG, err)
		}
		out, err := identify(dc.Outbox)
		if err != nil {
			return nil, fmt.Errorf("spm: domain %s: outbox: %w", dc.VG, err)
		}
		if in == out {
			return nil, fmt.Errorf("spm: domain %s: inbox %s and outbox %s are the same volume", dc.VG, dc.Inbox, dc.Outbox)
		}
		r := routes[in]
		_, outIsInbox := routes[out]
		_, inIsOutbox := outboxes[in]
		_, outTaken := outboxes[out]
		switch {
		case outIsInbox || inIsOutbox:
			// Each mailbox zeroes its outbox at start: one would wipe the other's inbox.
			return nil, fmt.Errorf("spm: domain %s: inbox %s and outbox %s: one of them is another domain's volume of the other kind", dc.VG, dc.Inbox, dc.Outbox)
		case r == nil && outTaken:
			return nil, fmt.Errorf("spm: domain %s: outbox %s already serves another inbox than %s", dc.VG, dc.Outbox, dc.Inbox)
		case r == nil:
			r = &mailboxRoute{inbox: dc.Inbox, outbox: dc.Outbox, outboxID: out, domains: map[string]*domain{}, owner: s}
			routes[in] = r
			outboxes[out] = in
			s.mailboxes = append(s.mailboxes, r)
		case r.outboxID != out:
			return nil, fmt.Errorf("spm: domain %s: inbox %s is already paired with outbox %s, not %s", dc.VG, dc.Inbox, r.outbox, dc.Outbox)
		}
		d := newDomain(dc, lvmPath, s.log)
		r.domains[dc.VG] = d
		s.domains = append(s.domains, d)
	}
	// Probe each domain's shell with the options its commands get: a missing lvm
	// or command profile, or a setting this lvm rejects, is a clear error now, not
	// a failure reply for every request later. On failure no lvm is left running.
	for _, d := range s.domains {
		if err := d.shell.run(append([]string{"version"}, lvmArgs(d.devices)...)...); err != nil {
			for _, d := range s.domains {
				d.shell.Close()
			}
			return nil, fmt.Errorf("spm: domain %s: lvm does not answer through its shell (is %s/profile/%s.profile there?): %w",
				d.cfg.VG, lvmSystemDir(), lvmProfile, err)
		}
	}
	for _, d := range s.domains {
		go d.run()
	}
	for _, r := range s.mailboxes {
		mb, err := mailbox.OpenSPM(mailbox.SPMConfig{
			Inbox: r.inbox, Outbox: r.outbox, Handler: r, Log: s.log,
			EventPollMin: cfg.EventPollMin, EventPollMax: cfg.EventPollMax, ScanInterval: cfg.ScanInterval,
			MaxHandling: maxPending, IgnoreSignatures: cfg.IgnoreSignatures,
		})
		if err != nil {
			s.Close()
			return nil, fmt.Errorf("spm: %w", err)
		}
		r.spm = mb
	}
	s.log.Info().Int("domains", len(s.domains)).Int("mailboxes", len(s.mailboxes)).Msg("SPM serving")
	return s, nil
}

// volumeID is what a mailbox volume is, whatever the path naming it: the device
// number of a block device, or the device and inode of a file.
type volumeID struct {
	block    bool
	dev, ino uint64
}

func identify(path string) (volumeID, error) {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return volumeID{}, &os.PathError{Op: "stat", Path: path, Err: err}
	}
	if st.Mode&syscall.S_IFMT == syscall.S_IFBLK {
		return volumeID{block: true, dev: st.Rdev}, nil
	}
	return volumeID{dev: st.Dev, ino: st.Ino}, nil
}

func lvmSystemDir() string {
	if d := os.Getenv("LVM_SYSTEM_DIR"); d != "" {
		return d
	}
	return "/etc/lvm"
}

// MailboxVolumes returns a domain's inbox and outbox: the ones given, or, when
// neither is, the VG's own inbox and outbox LVs. One without the other is an error.
func MailboxVolumes(vg, inbox, outbox string) (string, string, error) {
	switch {
	case (inbox == "") != (outbox == ""):
		return "", "", fmt.Errorf("domain %s: inbox and outbox go together (or neither, for the VG's own)", vg)
	case inbox == "":
		return "/dev/" + vg + "/inbox", "/dev/" + vg + "/outbox", nil
	}
	return inbox, outbox, nil
}

func (dc DomainConfig) withDefaults() (DomainConfig, error) {
	u, err := mailbox.ParseUUID(dc.VG)
	if err != nil || u.String() != dc.VG {
		return dc, fmt.Errorf("domain %q: the VG name must be the domain UUID in lowercase 8-4-4-4-12 form", dc.VG)
	}
	if dc.Inbox, dc.Outbox, err = MailboxVolumes(dc.VG, dc.Inbox, dc.Outbox); err != nil {
		return dc, err
	}
	if dc.Devices != nil && len(dc.Devices) == 0 {
		return dc, fmt.Errorf("domain %s: an empty device list (leave devices out to find the PVs by scanning)", dc.VG)
	}
	for _, dev := range dc.Devices {
		if !strings.HasPrefix(dev, "/") || strings.ContainsAny(dev, " \t\n,'\"") {
			return dc, fmt.Errorf("domain %s: device %q: an absolute path without blanks, commas or quotes", dc.VG, dev)
		}
	}
	if dc.MaxLVSize == 0 {
		dc.MaxLVSize = DefaultMaxLVSize
	}
	if dc.SpacePoll <= 0 {
		dc.SpacePoll = DefaultSpacePoll
	}
	dc.Devices = slices.Clone(dc.Devices)
	return dc, nil
}

// Close stops the mailboxes, which withdraws every request not answered yet, then
// each worker: an lvextend already running finishes (LVM is never stopped
// mid-command), but no further one starts, not even for the requests left in the
// worker's round. Close then ends the lvm shells. Unanswered requests stay in the
// inbox for the next SPM, which handles them again ("extend to N" is idempotent).
// Calling Close again returns the first call's result.
func (s *SPM) Close() error {
	s.closeOnce.Do(func() {
		var errs []error
		for _, r := range s.mailboxes {
			if r.spm != nil {
				errs = append(errs, r.spm.Close())
			}
		}
		for _, d := range s.domains {
			d.close()
		}
		s.closeErr = errors.Join(errs...)
	})
	return s.closeErr
}

// AddLocal links a host of this process to the mailbox serving domain vg, so that
// they wake each other (mailbox.SPM.AddLocal).
func (s *SPM) AddLocal(vg string, h *mailbox.Host) error {
	for _, r := range s.mailboxes {
		if r.domains[vg] != nil {
			r.spm.AddLocal(h)
			return nil
		}
	}
	return fmt.Errorf("spm: domain %s not served", vg)
}

// RemoveLocal undoes AddLocal.
func (s *SPM) RemoveLocal(h *mailbox.Host) {
	for _, r := range s.mailboxes {
		r.spm.RemoveLocal(h)
	}
}

// Status is a snapshot of what the SPM is doing, for `lvwatch status`.
type Status struct {
	Domains       []DomainStatus  `json:"domains"`
	Mailboxes     []MailboxStatus `json:"mailboxes"`
	UnknownDomain uint64          `json:"unknown_domain_requests"`
}

// MailboxStatus is one mailbox's counters.
type MailboxStatus struct {
	Inbox   string           `json:"inbox"`
	Outbox  string           `json:"outbox"`
	Domains []string         `json:"domains"`
	Stats   mailbox.SPMStats `json:"stats"`
}

// Status returns the current snapshot.
func (s *SPM) Status() Status {
	st := Status{UnknownDomain: s.unknown.Load()}
	for _, d := range s.domains {
		st.Domains = append(st.Domains, d.status())
	}
	for _, r := range s.mailboxes {
		ms := MailboxStatus{Inbox: r.inbox, Outbox: r.outbox}
		for vg := range r.domains {
			ms.Domains = append(ms.Domains, vg)
		}
		slices.Sort(ms.Domains)
		if r.spm != nil {
			ms.Stats = r.spm.Stats()
		}
		st.Mailboxes = append(st.Mailboxes, ms)
	}
	return st
}
