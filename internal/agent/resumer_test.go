package agent

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/backoff"
	"github.com/lvwatch/lvwatch/internal/resume"
	"github.com/lvwatch/lvwatch/internal/testutil"
	"github.com/lvwatch/lvwatch/internal/watch"
)

func TestStale(t *testing.T) {
	const src = "qmp /run/qemu-server/*.qmp"
	old := resume.Outcome{Source: src, VM: "/run/qemu-server/101.qmp", Action: resume.Left, Waiting: []resume.Drive{{Name: "virtio0"}}}
	other := resume.Outcome{Source: src, VM: "/run/qemu-server/102.qmp", Action: resume.Unaffected}
	for _, tc := range []struct {
		name     string
		outcomes []resume.Outcome
		want     bool
	}{
		{"looked at again", []resume.Outcome{other, {Source: src, VM: old.VM, Action: resume.Resumed}}, true},
		{"looked at for another device", []resume.Outcome{{Source: src, VM: old.VM, Action: resume.Unaffected}}, false},
		{"could not be asked", []resume.Outcome{{Source: src, VM: old.VM, Action: resume.Failed}}, false},
		{"its source could not list", []resume.Outcome{{Source: src, Action: resume.Failed}}, false},
		{"gone", []resume.Outcome{other}, true},
		{"gone, and no VM left", nil, true},
		{"another source's", []resume.Outcome{{Source: "libvirt (this host's)", VM: old.VM, Action: resume.Resumed}, other}, true},
	} {
		if got := stale(old, []resume.Source{resume.QMP{Patterns: []string{"/run/qemu-server/*.qmp"}}}, tc.outcomes); got != tc.want {
			t.Errorf("%s: stale = %v, want %v", tc.name, got, tc.want)
		}
	}
	if stale(old, []resume.Source{resume.Libvirt{}}, nil) {
		t.Error("a pass over libvirt alone dropped what a QMP pass said")
	}
}

// flakySource fails to list its VMs the first fails times it is asked, and
// lists none after.
type flakySource struct {
	mu     sync.Mutex
	fails  int
	visits int
}

func (s *flakySource) String() string { return "flaky" }

func (s *flakySource) Visit(context.Context, func(resume.Machine)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.visits++
	if s.visits <= s.fails {
		return errors.New("the monitor is busy")
	}
	return nil
}

func (s *flakySource) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.visits
}

// A look that could not ask every VM is made again until one can; then no more.
func TestRelookAfterFailure(t *testing.T) {
	a := &Agent{cfg: Config{Log: zerolog.Nop()}, vols: map[watch.Dev]*volume{}}
	a.metrics = newMetrics(a)
	src := &flakySource{fails: 2}
	r := newResumer(a, []resume.Source{src})
	r.retry = backoff.New(time.Millisecond, 4*time.Millisecond)
	a.resumer = r
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go r.run(ctx)

	r.check(watch.Dev{Major: 7, Minor: 1}, time.Time{})
	testutil.WaitFor(t, 10*time.Second, "the looks until one succeeds", func() bool { return src.count() >= 3 })
	time.Sleep(50 * time.Millisecond) // more than the backoff's longest wait
	if n := src.count(); n != 3 {
		t.Errorf("%d looks for two failures: want 3, none after the one that succeeded", n)
	}
}

// A look's outcomes are logged at their level once, and at debug level while
// a VM stays as it was; a resume always.
func TestLogOutcomesOnce(t *testing.T) {
	var buf strings.Builder
	a := &Agent{cfg: Config{Log: zerolog.New(&buf).Level(zerolog.InfoLevel)}}
	r := newResumer(a, nil)
	src := []resume.Source{resume.QMP{Patterns: []string{"/run/qemu-server/*.qmp"}}}
	busy := resume.Outcome{Source: src[0].String(), VM: "/run/qemu-server/101.qmp", Action: resume.Failed, Why: "i/o timeout"}
	eio := resume.Outcome{Source: src[0].String(), VM: "/run/qemu-server/102.qmp", Action: resume.Left, Paused: true, Why: "virtio0 failed"}
	resumed := resume.Outcome{Source: src[0].String(), VM: "/run/qemu-server/103.qmp", Action: resume.Resumed, Why: "room again on virtio0"}
	lines := func() int {
		n := strings.Count(buf.String(), "\n")
		buf.Reset()
		return n
	}
	r.logOutcomes(src, []resume.Outcome{busy, eio, resumed})
	if n := lines(); n != 3 {
		t.Errorf("first look: %d lines, want 3", n)
	}
	r.logOutcomes(src, []resume.Outcome{busy, eio, resumed})
	if n := lines(); n != 1 {
		t.Errorf("the same again: %d lines, want the resume's alone", n)
	}
	busy.Why = "connection refused"
	r.logOutcomes(src, []resume.Outcome{busy, eio})
	if n := lines(); n != 1 {
		t.Errorf("a new reason: %d lines, want 1", n)
	}
	r.logOutcomes(src, []resume.Outcome{busy})      // 102 gone
	r.logOutcomes(src, []resume.Outcome{busy, eio}) // and back
	r.logOutcomes(nil, []resume.Outcome{})          // a pass over other sources forgets nothing
	if n := lines(); n != 1 {
		t.Errorf("a VM gone and back: %d lines, want 1", n)
	}
}

// watchingSource tells of pauses as they happen.
type watchingSource struct{ flakySource }

func (s *watchingSource) WatchPauses(ctx context.Context, fn func(string)) error {
	<-ctx.Done()
	return ctx.Err()
}

// With a source that tells of no pauses (QMP), the VMs of the watched LVs are
// looked at every sweepEvery, asked or not; a source that tells of pauses
// (libvirt) alone is not swept.
func TestSweep(t *testing.T) {
	for _, tc := range []struct {
		name string
		src  interface {
			resume.Source
			count() int
		}
		swept bool
	}{
		{"qmp", &flakySource{}, true},
		{"libvirt", &watchingSource{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &Agent{cfg: Config{Log: zerolog.Nop()}, vols: map[watch.Dev]*volume{{Major: 253, Minor: 4}: {}}}
			a.metrics = newMetrics(a)
			r := newResumer(a, []resume.Source{tc.src})
			r.sweepEvery = time.Millisecond
			a.resumer = r
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			go r.run(ctx)
			if tc.swept {
				testutil.WaitFor(t, 10*time.Second, "three sweeps", func() bool { return tc.src.count() >= 3 })
				return
			}
			time.Sleep(50 * time.Millisecond) // fifty sweeps' time
			if n := tc.src.count(); n != 0 {
				t.Errorf("%d looks with no sweep and none asked for", n)
			}
		})
	}
}
