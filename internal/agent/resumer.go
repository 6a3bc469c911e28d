package agent

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/backoff"
	"github.com/lvwatch/lvwatch/internal/resume"
	"github.com/lvwatch/lvwatch/internal/watch"
)

// resumer looks at the VMs of this host off the volumes' loops (a VM's monitor
// may take seconds to answer, and an extension never waits for it): it resumes
// those QEMU paused for want of space on an LV that has room again, and asks for
// an urgent extension of an armed LV that a VM ran out of (a write the watermark
// did not see coming: the agent was down, or the write jumped past it).
type resumer struct {
	a       *Agent
	sources []resume.Source
	log     zerolog.Logger
	wake    chan struct{}

	mu      sync.Mutex
	due     map[watch.Dev]time.Time // devices to look at, and when their new table went live
	waiting []resume.Outcome        // the VMs the last looks left paused for want of space
}

func newResumer(a *Agent, sources []resume.Source) *resumer {
	return &resumer{a: a, sources: sources, log: a.cfg.Log.With().Str("component", "resume").Logger(),
		wake: make(chan struct{}, 1), due: map[watch.Dev]time.Time{}}
}

// check asks for a look at the VMs using dev, whose new table went live at live
// (the zero time: not grown, just look).
func (r *resumer) check(dev watch.Dev, live time.Time) {
	r.mu.Lock()
	if t, ok := r.due[dev]; !ok || t.IsZero() {
		r.due[dev] = live
	}
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// waitsOn reports whether a VM was left paused waiting for room on dev.
func (r *resumer) waitsOn(dev watch.Dev) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, o := range r.waiting {
		for _, d := range o.Waiting {
			if d.Dev == dev {
				return true
			}
		}
	}
	return false
}

func (r *resumer) paused() []resume.Outcome {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.waiting)
}

func (r *resumer) run(ctx context.Context) {
	var wg sync.WaitGroup
	defer wg.Wait()
	for _, src := range r.sources {
		if w, ok := src.(resume.PauseWatcher); ok {
			wg.Go(func() { r.follow(ctx, w) })
		}
	}
	for {
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		}
		r.mu.Lock()
		due := r.due
		r.due = map[watch.Dev]time.Time{}
		r.mu.Unlock()
		r.look(ctx, due)
	}
}

// Watches of a VM manager's pauses are set up again after 1 s, doubling up to
// 30 s: a libvirtd restarted, or started after the agent.
const (
	minRewatch = time.Second
	maxRewatch = 30 * time.Second
)

// follow looks at the VMs of a disk as soon as a write fails on it for want of
// space, as w tells: a write the watermark missed (it jumped past the
// threshold, or the agent was down) leaves an armed LV that a VM ran out of,
// and the look extends it at once.
func (r *resumer) follow(ctx context.Context, w resume.PauseWatcher) {
	retry := backoff.New(minRewatch, maxRewatch)
	for {
		start := time.Now()
		err := w.WatchPauses(ctx, func(path string) {
			if dev, err := watch.DevOf(path); err == nil {
				r.log.Info().Stringer("source", w).Str("disk", path).Msg("a VM's write failed for want of space")
				r.check(dev, time.Time{})
			}
		})
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > maxRewatch {
			retry.Reset() // it ran a while: a new break, not the same one
		}
		if !errors.Is(err, resume.ErrNoManager) {
			r.log.Warn().Err(err).Stringer("source", w).Msg("VM pause events lost; watching again")
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry.Next()):
		}
	}
}

// look runs one pass over the VMs using the due devices.
func (r *resumer) look(ctx context.Context, due map[watch.Dev]time.Time) {
	devs := make([]watch.Dev, 0, len(due))
	var live time.Time
	for dev, t := range due {
		devs = append(devs, dev)
		if !t.IsZero() && (live.IsZero() || t.Before(live)) {
			live = t
		}
	}
	outcomes := resume.Run(ctx, r.sources, devs, r.a.hasRoom, r.log)
	var waiting []resume.Outcome
	for _, o := range outcomes {
		switch {
		case o.Action == resume.Resumed:
			r.a.metrics.resumed(o, live)
		case o.Action == resume.Failed:
			r.a.metrics.resumeFailed()
		case o.Pending():
			waiting = append(waiting, o)
		}
	}
	r.mu.Lock()
	for _, o := range waiting {
		if !slices.ContainsFunc(r.waiting, func(old resume.Outcome) bool { return sameVM(old, o) }) {
			r.a.metrics.pauses.Inc()
		}
	}
	r.waiting = slices.DeleteFunc(r.waiting, func(old resume.Outcome) bool { return stale(old, outcomes) })
	r.waiting = append(r.waiting, waiting...)
	r.mu.Unlock()
	for _, o := range waiting {
		for _, d := range o.Waiting {
			r.a.urgent(d.Dev, o.VM)
		}
	}
}

func sameVM(x, y resume.Outcome) bool { return x.VM == y.VM && x.Source == y.Source }

// stale reports whether a pass's outcomes replace what an earlier pass said of
// a VM waiting for space: the pass looked at the VM for one of its devices, or
// the VM's source listed its VMs without it (gone). A VM or a source that could
// not be asked keeps what was said of it.
func stale(old resume.Outcome, outcomes []resume.Outcome) bool {
	for _, o := range outcomes {
		switch {
		case sameVM(o, old):
			return o.Action != resume.Unaffected && o.Action != resume.Failed
		case o.Source == old.Source && o.VM == "": // the source could not list its VMs
			return false
		}
	}
	return true
}

// hasRoom is the agent's word on a device: a watched LV, armed (no write past
// its threshold, so room left before its end).
func (a *Agent) hasRoom(dev watch.Dev) bool {
	a.mu.Lock()
	v := a.vols[dev]
	a.mu.Unlock()
	return v != nil && v.status().State == StateArmed
}

// urgent extends the armed LV a VM ran out of space on, at once.
func (a *Agent) urgent(dev watch.Dev, vm string) {
	a.mu.Lock()
	v := a.vols[dev]
	a.mu.Unlock()
	if v == nil || v.status().State != StateArmed {
		return // not ours, or its extension is under way (its end looks again) or impossible
	}
	v.log.Warn().Str("vm", vm).Msg("a VM ran out of space on this LV before its threshold said so: extending it now")
	v.urgent.Store(true)
	v.kick(time.Now())
}
