// Package agent is lvwatch on a host: it watches the active thin LVs of its
// storage domains with the BPF watcher, and for each crossing asks the SPM for
// more through the mailbox, reloads the LV's table by ioctl, checks the new size
// and re-arms. It can run the domain's SPM in the same process.
package agent

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/dm"
	"github.com/lvwatch/lvwatch/internal/mailbox"
	"github.com/lvwatch/lvwatch/internal/refresh"
	"github.com/lvwatch/lvwatch/internal/resume"
	"github.com/lvwatch/lvwatch/internal/spm"
	"github.com/lvwatch/lvwatch/internal/uevent"
	"github.com/lvwatch/lvwatch/internal/watch"
)

// Config configures an agent.
type Config struct {
	HostID  int // this host's id in the domains' mailboxes, 1..249
	Domains []Domain
	// SPM, when set, runs the SPM of these domains in this process (its Domains
	// and Log are filled in from the agent's), woken by this host's requests.
	SPM *spm.Config

	// WaitingAfter is how long a request goes unanswered before its volume's
	// state says waiting (the SPM is away, or the VG is full); default 30 s.
	WaitingAfter time.Duration

	PinDir   string // the watcher's pins; default watch.DefaultPinDir
	StateDir string // the refresher's records; default refresh.DefaultStateDir
	Log      zerolog.Logger

	// Heartbeat, when set, is called from Run's event loop every half
	// HeartbeatEvery (systemd's watchdog interval): a loop that is stuck stops
	// calling it.
	Heartbeat      func()
	HeartbeatEvery time.Duration

	// VMs are the ways to this host's VMs (QMP sockets, libvirt): the agent
	// resumes those QEMU paused for want of space on an LV it gave room.
	VMs []resume.Source
}

// Domain is one storage domain the agent watches the LVs of.
type Domain struct {
	VG            string   // the domain UUID
	Inbox, Outbox string   // default /dev/VG/inbox and /dev/VG/outbox
	Devices       []string // the VG's PVs; nil: found from the LVs' tables (or one scan)
	Policy        Policy
	// Raw also watches LVs that do not hold a qcow2 image, up to MaxRawSize.
	Raw        bool
	MaxRawSize uint64
}

// DefaultWaitingAfter is Config.WaitingAfter's default.
const DefaultWaitingAfter = 30 * time.Second

// Agent is a running agent.
type Agent struct {
	cfg  Config
	log  zerolog.Logger
	w    *watch.Watcher
	ctl  *dm.Control
	ref  *refresh.Refresher
	spm  *spm.SPM
	doms map[string]*domain
	ue   *uevent.Listener

	metrics *metrics
	resumer *resumer

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu   sync.Mutex
	vols map[watch.Dev]*volume
}

// domain is a Domain with its mailbox host and the PVs its refreshes read.
type domain struct {
	Domain
	id   mailbox.UUID
	host *mailbox.Host

	mu      sync.Mutex
	devices []string
}

func (d *domain) pvs() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Clone(d.devices)
}

func (d *domain) setPVs(devices []string) {
	d.mu.Lock()
	d.devices = slices.Clone(devices)
	d.mu.Unlock()
}

// Start opens the watcher, device-mapper and the mailboxes, starts the SPM when
// configured, and reconciles: every active LV of the domains is armed, and one
// already past its threshold is extended at once. Run serves the crossings.
func Start(cfg Config) (_ *Agent, err error) {
	if len(cfg.Domains) == 0 {
		return nil, errors.New("agent: no domain to watch")
	}
	if cfg.Heartbeat != nil && cfg.HeartbeatEvery <= 0 {
		return nil, errors.New("agent: a heartbeat needs its interval")
	}
	if cfg.WaitingAfter <= 0 {
		cfg.WaitingAfter = DefaultWaitingAfter
	}
	a := &Agent{cfg: cfg, log: cfg.Log.With().Str("component", "agent").Logger(), doms: map[string]*domain{}, vols: map[watch.Dev]*volume{}}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.metrics = newMetrics(a)
	a.resumer = newResumer(a, cfg.VMs)
	defer func() {
		if err != nil {
			a.Close()
		}
	}()
	for _, dc := range cfg.Domains {
		d, err := a.newDomain(dc)
		if err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
		a.doms[d.VG] = d
	}
	if cfg.SPM != nil {
		sc := *cfg.SPM
		sc.Log = cfg.Log
		if sc.Domains == nil {
			for _, d := range a.doms {
				sc.Domains = append(sc.Domains, spm.DomainConfig{VG: d.VG, Inbox: d.Inbox, Outbox: d.Outbox, Devices: d.Devices})
			}
		}
		if a.spm, err = spm.Start(sc); err != nil {
			return nil, fmt.Errorf("agent: %w", err)
		}
	}
	// The mailboxes after the SPM: a co-located host is linked to it at once.
	for _, d := range a.doms {
		if d.host, err = mailbox.OpenHost(mailbox.HostConfig{Inbox: d.Inbox, Outbox: d.Outbox, HostID: cfg.HostID, Log: cfg.Log}); err != nil {
			return nil, fmt.Errorf("agent: domain %s: %w", d.VG, err)
		}
		if a.spm != nil {
			if err := a.spm.AddLocal(d.VG, d.host); err != nil {
				return nil, fmt.Errorf("agent: %w", err)
			}
		}
	}
	if a.ctl, err = dm.Open(); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if a.ref, err = refresh.New(refresh.Kernel(a.ctl), refresh.Options{Log: cfg.Log, Scan: true, StateDir: cfg.StateDir}); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if a.w, err = watch.Open(watch.Options{PinDir: cfg.PinDir, Logger: cfg.Log}); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	// Listening before the first look at device-mapper: an LV activated in
	// between is seen by one or the other.
	if a.ue, err = uevent.Listen("block"); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	if err := a.reconcile(); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	a.wg.Add(2)
	go func() {
		defer a.wg.Done()
		a.followDevices()
	}()
	go func() {
		defer a.wg.Done()
		a.resumer.run(a.ctx)
	}()
	return a, nil
}

func (a *Agent) newDomain(dc Domain) (*domain, error) {
	id, err := mailbox.ParseUUID(dc.VG)
	if err != nil {
		return nil, fmt.Errorf("domain %q: the VG name must be the domain UUID: %w", dc.VG, err)
	}
	if dc.Inbox, dc.Outbox, err = spm.MailboxVolumes(dc.VG, dc.Inbox, dc.Outbox); err != nil {
		return nil, err
	}
	dc.Policy = dc.Policy.withDefaults()
	if err := dc.Policy.validate(); err != nil {
		return nil, fmt.Errorf("domain %s: %w", dc.VG, err)
	}
	return &domain{Domain: dc, id: id, devices: slices.Clone(dc.Devices)}, nil
}

// reconcile makes the watched volumes the active LVs of the domains: it drops
// the volumes whose LV is gone (or whose device number is another LV's now:
// after lost uevents), arms every active LV, and drops the pinned armings of
// devices that are not one of them.
func (a *Agent) reconcile() error {
	lvs, err := activeLVs(a.ctl, slices.Collect(maps.Keys(a.doms)))
	if err != nil {
		return err
	}
	active := map[watch.Dev]found{}
	for _, f := range lvs {
		active[watch.Dev{Major: f.dev.Major, Minor: f.dev.Minor}] = f
	}
	a.mu.Lock()
	var gone []*volume
	for dev, v := range a.vols {
		if f, ok := active[dev]; !ok || f.vg != v.d.VG || f.lv != v.lv {
			gone = append(gone, v)
		}
	}
	a.mu.Unlock()
	for _, v := range gone {
		a.drop(v)
	}
	for _, f := range lvs {
		a.add(f)
	}
	armings, err := a.w.List()
	if err != nil {
		return fmt.Errorf("list the pinned armings: %w", err)
	}
	for _, arm := range armings {
		a.mu.Lock()
		_, ours := a.vols[arm.Dev]
		a.mu.Unlock()
		if !ours {
			if _, err := a.w.Disarm(arm.Dev); err != nil {
				a.log.Warn().Err(err).Stringer("dev", arm.Dev).Msg("cannot drop a pinned arming of a device no longer watched")
			}
		}
	}
	a.log.Info().Int("volumes", len(a.vols)).Int("pinned_armings", len(armings)).Msg("agent watching")
	return nil
}

// add starts watching an active LV, unless it is not one to watch (logged).
func (a *Agent) add(f found) {
	d := a.doms[f.vg]
	dev := watch.Dev{Major: f.dev.Major, Minor: f.dev.Minor}
	log := a.log.With().Str("vg", f.vg).Str("lv", f.lv).Stringer("dev", dev).Logger()
	if d.pvs() == nil {
		if pvs, err := tableDevices(a.ctl, f.dev); err == nil {
			d.setPVs(pvs) // a first guess; the refresh completes it (one scan at most)
		}
	}
	a.mu.Lock()
	_, dup := a.vols[dev]
	a.mu.Unlock()
	if dup {
		return
	}
	v, err := newVolume(a, d, f.lv, dev, log)
	if err != nil {
		log.Info().Err(err).Msg("LV not watched")
		return
	}
	a.mu.Lock()
	a.vols[dev] = v
	a.mu.Unlock()
	ctx, cancel := context.WithCancel(a.ctx)
	v.stop, v.done = cancel, make(chan struct{})
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		defer close(v.done)
		v.run(ctx)
	}()
	v.kick(time.Now()) // the first round arms it, or extends it at once when already past
}

// Run serves crossings until ctx ends or the watcher fails.
func (a *Agent) Run(ctx context.Context) error {
	var lastBeat time.Time
	for {
		rctx, cancel := ctx, context.CancelFunc(func() {})
		if a.cfg.Heartbeat != nil {
			// A beat every half interval, counted from the last beat (not from
			// this read), so events in between never push one past the interval.
			if time.Since(lastBeat) >= a.cfg.HeartbeatEvery/2 {
				a.cfg.Heartbeat()
				lastBeat = time.Now()
			}
			rctx, cancel = context.WithDeadline(ctx, lastBeat.Add(a.cfg.HeartbeatEvery/2))
		}
		ev, err := a.w.Read(rctx)
		cancel()
		switch {
		case ctx.Err() != nil:
			return nil
		case errors.Is(err, context.DeadlineExceeded):
			continue // the heartbeat's turn
		case err != nil:
			return fmt.Errorf("agent: read crossings: %w", err)
		}
		a.mu.Lock()
		v := a.vols[ev.Dev]
		a.mu.Unlock()
		if v == nil {
			continue // disarmed since (its LV went away)
		}
		v.kick(time.Now().Add(-ev.Latency))
	}
}

// followDevices keeps the watched volumes in step with device-mapper from the
// kernel's uevents: an LV activated is watched, one removed is dropped, one
// resized by someone else is re-armed. After lost events it reconciles again.
func (a *Agent) followDevices() {
	for {
		ev, err := a.ue.Read()
		switch {
		case errors.Is(err, os.ErrClosed):
			return
		case errors.Is(err, uevent.ErrOverflow):
			a.log.Warn().Err(err).Msg("device events lost; looking at device-mapper again")
			if err := a.reconcile(); err != nil {
				a.log.Error().Err(err).Msg("cannot list the active LVs")
			}
			continue
		case err != nil:
			a.log.Debug().Err(err).Msg("device event not understood")
			continue
		}
		dev := watch.Dev{Major: ev.Major, Minor: ev.Minor}
		a.mu.Lock()
		v := a.vols[dev]
		a.mu.Unlock()
		switch {
		case ev.Action == "remove" && v != nil:
			a.drop(v)
		case ev.Action == "change" && v != nil && ev.Resize():
			v.kick(time.Now()) // re-armed at its new size (our own refreshes too: harmless)
		case (ev.Action == "add" || ev.Action == "change") && v == nil:
			a.addDevice(dev)
		}
	}
}

// addDevice watches dev if it is an active LV of one of the domains.
func (a *Agent) addDevice(dev watch.Dev) {
	info, err := a.ctl.Info(dm.ByDevno(dev.Major, dev.Minor))
	if err != nil || !info.HasLiveTable() {
		return // not device-mapper's, gone already, or not loaded yet (its resume sends a change)
	}
	d := dm.Device{Name: info.Name, UUID: info.UUID, Major: info.Major, Minor: info.Minor}
	if lv, vg, ok := matchLV(d, slices.Collect(maps.Keys(a.doms))); ok {
		a.add(found{vg: vg, lv: lv, dev: d})
	}
}

// drop stops watching v: its LV was removed (deactivated) on this host. It
// waits for v's loop to end first, so that no Arm of the loop comes after the
// Disarm.
func (a *Agent) drop(v *volume) {
	a.mu.Lock()
	delete(a.vols, v.dev)
	a.mu.Unlock()
	v.stop()
	<-v.done
	if _, err := a.w.Disarm(v.dev); err != nil {
		v.log.Warn().Err(err).Msg("cannot disarm a removed LV")
	}
	v.log.Info().Msg("LV gone from this host; no longer watched")
}

// Close stops the volumes' loops (an extension under way ends at its next step:
// a refresh is never cut in the middle), the SPM and the mailboxes, and keeps
// the watcher's pins: armings stay, and crossings meanwhile wait for the next start.
func (a *Agent) Close() error {
	a.cancel()
	if a.ue != nil {
		a.ue.Close()
	}
	a.wg.Wait()
	var errs []error
	for _, d := range a.doms {
		if d.host != nil {
			if a.spm != nil {
				a.spm.RemoveLocal(d.host)
			}
			ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
			errs = append(errs, d.host.Close(ctx))
			cancel()
		}
	}
	if a.spm != nil {
		errs = append(errs, a.spm.Close())
	}
	if a.w != nil {
		errs = append(errs, a.w.Close())
	}
	if a.ctl != nil {
		errs = append(errs, a.ctl.Close())
	}
	return errors.Join(errs...)
}

// closeTimeout bounds the clean handshakes of answered requests at Close.
const closeTimeout = 2 * time.Second

// Status is a snapshot for `lvwatch status`.
type Status struct {
	HostID  int            `json:"host_id"`
	Volumes []VolumeStatus `json:"volumes"`
	// PausedVMs are the VMs paused for want of space, with the drives they wait for.
	PausedVMs []resume.Outcome `json:"paused_vms,omitempty"`
	SPM       *spm.Status      `json:"spm,omitempty"`
}

// Status returns the current snapshot, volumes sorted by VG and LV.
func (a *Agent) Status() Status {
	st := Status{HostID: a.cfg.HostID, PausedVMs: a.resumer.paused()}
	a.mu.Lock()
	vols := slices.Collect(maps.Values(a.vols))
	a.mu.Unlock()
	for _, v := range vols {
		vs := v.status()
		// The highest write as it is now: the volume's own record is from its
		// last arming, before the writes that crossed and those since.
		if high, err := a.w.High(v.dev); err == nil {
			vs.High = max(vs.High, high)
		}
		st.Volumes = append(st.Volumes, vs)
	}
	slices.SortFunc(st.Volumes, func(x, y VolumeStatus) int { return cmp.Or(cmp.Compare(x.VG, y.VG), cmp.Compare(x.LV, y.LV)) })
	if a.spm != nil {
		s := a.spm.Status()
		st.SPM = &s
	}
	return st
}
