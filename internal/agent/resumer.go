package agent

import (
	"context"
	"errors"
	"maps"
	"slices"
	"strings"
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

	// Only run's goroutine uses these.
	retry      backoff.Backoff   // the wait before a look that could not ask every VM is made again
	said       map[string]string // what the looks said last of each VM (vmKey): its action and why
	sweepEvery time.Duration
}

// A look that could not ask every VM (its monitor busy: Proxmox's qm holds a
// VM's socket while a command runs; libvirtd restarting) is made again for the
// same devices after 5 s, doubling up to 5 min while such looks fail.
const (
	minRelook = 5 * time.Second
	maxRelook = 5 * time.Minute
)

// defaultSweepEvery: where a source tells of no pauses (QMP sockets, which are
// never held open), its VMs are looked at this often for every watched LV, for
// a VM that ran out of space with no crossing seen (a write that jumped past
// the threshold, a lost event): the look then extends its LV at once.
const defaultSweepEvery = time.Minute

func newResumer(a *Agent, sources []resume.Source) *resumer {
	return &resumer{a: a, sources: sources, log: a.cfg.Log.With().Str("component", "resume").Logger(),
		wake: make(chan struct{}, 1), due: map[watch.Dev]time.Time{}, retry: backoff.New(minRelook, maxRelook),
		said: map[string]string{}, sweepEvery: defaultSweepEvery}
}

// check asks for a look at the VMs using dev, whose new table went live at live
// (the zero time: not grown, just look).
func (r *resumer) check(dev watch.Dev, live time.Time) {
	r.mu.Lock()
	addDue(r.due, dev, live)
	r.mu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// addDue adds dev to the devices to look at, keeping the time its new table
// went live if an earlier request said so.
func addDue(due map[watch.Dev]time.Time, dev watch.Dev, live time.Time) {
	if t, ok := due[dev]; !ok || t.IsZero() {
		due[dev] = live
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
	silent := slices.DeleteFunc(slices.Clone(r.sources), func(src resume.Source) bool {
		_, ok := src.(resume.PauseWatcher)
		return ok
	})
	var sweep <-chan time.Time
	if len(silent) > 0 {
		t := time.NewTicker(r.sweepEvery)
		defer t.Stop()
		sweep = t.C
	}
	again := map[watch.Dev]time.Time{} // the devices of looks that could not ask every VM
	var relook <-chan time.Time        // when to look at them again; nil while none waits
	for {
		sources, due := r.sources, map[watch.Dev]time.Time{}
		select {
		case <-ctx.Done():
			return
		case <-r.wake:
		case <-sweep:
			sources = silent
			r.a.mu.Lock()
			for dev := range r.a.vols {
				addDue(due, dev, time.Time{})
			}
			r.a.mu.Unlock()
		case <-relook:
			due, again, relook = again, map[watch.Dev]time.Time{}, nil
		}
		r.mu.Lock()
		if len(r.due) > 0 {
			sources = r.sources // asked for: every source
		}
		for dev, live := range r.due {
			addDue(due, dev, live)
		}
		r.due = map[watch.Dev]time.Time{}
		r.mu.Unlock()
		if len(due) == 0 {
			continue
		}
		switch {
		case r.look(ctx, sources, due):
			r.retry.Reset()
		case ctx.Err() != nil: // cut short: no VM failed
		default:
			for dev, live := range due {
				addDue(again, dev, live)
			}
			if relook == nil {
				wait := r.retry.Next()
				r.log.Debug().Dur("after", wait).Msg("not every VM could be asked: looking again")
				relook = time.After(wait) // collected unfired once run returns
			}
		}
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
// and the look extends it at once. A failure to watch is logged once at warning
// level while it repeats.
func (r *resumer) follow(ctx context.Context, w resume.PauseWatcher) {
	retry := backoff.New(minRewatch, maxRewatch)
	var lastErr string
	for {
		start := time.Now()
		err := w.WatchPauses(ctx, func(path string) {
			if dev, err := watch.DevOf(path); err == nil {
				r.log.Debug().Stringer("source", w).Str("disk", path).Msg("a VM's write failed for want of space")
				r.check(dev, time.Time{})
			}
		})
		if ctx.Err() != nil {
			return
		}
		if time.Since(start) > maxRewatch {
			retry.Reset() // it ran a while: a new break, not the same one
			lastErr = ""
		}
		switch {
		case errors.Is(err, resume.ErrNoManager):
		case err.Error() != lastErr:
			r.log.Warn().Err(err).Stringer("source", w).Msg("VM pause events lost; watching again")
		default:
			r.log.Debug().Err(err).Stringer("source", w).Msg("VM pause events still lost")
		}
		lastErr = err.Error()
		select {
		case <-ctx.Done():
			return
		case <-time.After(retry.Next()):
		}
	}
}

// look runs one pass over sources' VMs using the due devices, and reports
// whether it could ask every VM.
func (r *resumer) look(ctx context.Context, sources []resume.Source, due map[watch.Dev]time.Time) bool {
	start := time.Now()
	devs := slices.Collect(maps.Keys(due))
	outcomes := resume.Run(ctx, sources, devs, r.a.roomFor(due), zerolog.Nop())
	r.logOutcomes(sources, outcomes)
	var waiting []resume.Outcome
	r.mu.Lock()
	for _, o := range outcomes {
		if len(o.Full) > 0 && !slices.ContainsFunc(r.waiting, func(old resume.Outcome) bool { return sameVM(old, o) }) {
			r.a.metrics.pauses.Inc() // first seen paused for want of space
		}
		switch {
		case o.Action == resume.Resumed:
			r.a.metrics.resumed(o.At.Sub(grownAt(o, due)), !grownAt(o, due).IsZero())
		case o.Action == resume.Failed && o.VM != "":
			r.a.metrics.resumeFailed()
		case o.Pending():
			waiting = append(waiting, o)
		}
	}
	r.waiting = slices.DeleteFunc(r.waiting, func(old resume.Outcome) bool { return stale(old, sources, outcomes) })
	r.waiting = append(r.waiting, waiting...)
	r.mu.Unlock()
	for _, o := range waiting {
		for _, d := range o.Waiting {
			r.a.urgent(d.Dev, o.VM, start)
		}
	}
	return !slices.ContainsFunc(outcomes, func(o resume.Outcome) bool { return o.Action == resume.Failed })
}

// logOutcomes logs what a look did with each VM of sources: at its level the
// first time, at debug level while the VM stays as the last look said (paused
// on another error, its monitor still busy), as sweeps and relooks repeat
// themselves. Every resume is logged.
func (r *resumer) logOutcomes(sources []resume.Source, outcomes []resume.Outcome) {
	before := r.said
	r.said = map[string]string{}
	for key, said := range before {
		if !slices.ContainsFunc(sources, func(src resume.Source) bool { return strings.HasPrefix(key, src.String()+"\x00") }) {
			r.said[key] = said // not in this pass; a VM of its sources is said again below, or gone
		}
	}
	for _, o := range outcomes {
		key, said := vmKey(o), string(o.Action)+": "+o.Why
		if o.Action != resume.Resumed && before[key] == said {
			r.log.Debug().Str("source", o.Source).Str("vm", o.VM).Str("action", string(o.Action)).Str("why", o.Why).Msg("VM as before")
		} else {
			resume.LogOutcome(r.log, o)
		}
		r.said[key] = said
	}
}

func vmKey(o resume.Outcome) string { return o.Source + "\x00" + o.VM }

// grownAt is when the first new table of a resumed VM's drives went live, or
// the zero time when none of them was just grown.
func grownAt(o resume.Outcome, due map[watch.Dev]time.Time) time.Time {
	var first time.Time
	for _, d := range o.Full {
		if t := due[d.Dev]; !t.IsZero() && (first.IsZero() || t.Before(first)) {
			first = t
		}
	}
	return first
}

func sameVM(x, y resume.Outcome) bool { return x.VM == y.VM && x.Source == y.Source }

// stale reports whether the outcomes of a pass over sources replace what an
// earlier pass said of a VM waiting for space: the pass looked at the VM (it
// runs now, or it uses one of the devices looked at), or the VM's source listed
// its VMs without it (gone). A VM or a source that could not be asked, or was
// not in the pass, keeps what was said of it.
func stale(old resume.Outcome, sources []resume.Source, outcomes []resume.Outcome) bool {
	if !slices.ContainsFunc(sources, func(src resume.Source) bool { return src.String() == old.Source }) {
		return false
	}
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

// roomFor is the agent's word on a drive that ran out of space, for a look at
// the due devices: it is on a watched LV that has room (armed: no write past
// its threshold; or at its maximum, when the size check allows), and either
// its LV was just grown or QEMU's highest write on it is known (a VM that
// paused right after QEMU opened the image says nothing of where it writes).
func (a *Agent) roomFor(due map[watch.Dev]time.Time) resume.Room {
	return func(d resume.Drive) bool {
		a.mu.Lock()
		v := a.vols[d.Dev]
		a.mu.Unlock()
		if v == nil {
			return false
		}
		if state := v.status().State; state != StateArmed && state != StateAtMaximum {
			return false
		}
		return !due[d.Dev].IsZero() || d.Highest != 0
	}
}

// urgent extends the armed LV a VM ran out of space on, at once, unless the
// volume's state changed since the look began (an extension ended meanwhile:
// the VMs are looked at again instead).
func (a *Agent) urgent(dev watch.Dev, vm string, lookStart time.Time) {
	a.mu.Lock()
	v := a.vols[dev]
	a.mu.Unlock()
	if v == nil {
		return
	}
	switch st := v.status(); {
	case st.Since.After(lookStart):
		a.resumer.check(dev, time.Time{})
	case st.State == StateArmed:
		v.log.Warn().Str("vm", vm).Msg("a VM ran out of space on this LV before its threshold said so: extending it now")
		v.urgent.Store(true)
		v.kick(time.Now())
	}
	// Otherwise its extension is under way (its end looks again) or impossible.
}
