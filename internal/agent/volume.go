package agent

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/backoff"
	"github.com/lvwatch/lvwatch/internal/blockdev"
	"github.com/lvwatch/lvwatch/internal/lvm"
	"github.com/lvwatch/lvwatch/internal/mailbox"
	"github.com/lvwatch/lvwatch/internal/qcow2"
	"github.com/lvwatch/lvwatch/internal/size"
	"github.com/lvwatch/lvwatch/internal/watch"
)

// A volume's states, as Status shows them.
const (
	StateArmed     = "armed"     // waiting for a write past the threshold
	StateExtending = "extending" // a crossing is being served
	StateWaiting   = "waiting"   // the SPM has not answered for a while (away, or the VG is full)
	StateRetrying  = "retrying"  // a step failed; the next try is after a backoff
	StateAtMaximum = "at-maximum"
)

// VolumeStatus is one watched LV.
type VolumeStatus struct {
	VG         string    `json:"vg"`
	LV         string    `json:"lv"`
	Device     string    `json:"device"`
	Size       uint64    `json:"size"`
	MaxSize    uint64    `json:"max_size"`
	Threshold  uint64    `json:"threshold"`
	High       uint64    `json:"highest_write"`
	State      string    `json:"state"`
	Error      string    `json:"error,omitempty"`
	Extensions uint64    `json:"extensions"`
	Last       *Phases   `json:"last_extension,omitempty"`
	Since      time.Time `json:"since"`
}

// Phases time one extension: from the crossing write to the re-armed, bigger LV.
type Phases struct {
	Detect  time.Duration `json:"detect"`  // the crossing write queued → the agent has it
	Request time.Duration `json:"request"` // mailbox request → the SPM's reply
	Refresh time.Duration `json:"refresh"` // metadata read and table swap
	Rearm   time.Duration `json:"rearm"`
	Total   time.Duration `json:"total"`
	From    uint64        `json:"from"`
	To      uint64        `json:"to"`
}

type volume struct {
	a      *Agent
	d      *domain
	lv     string
	id     mailbox.UUID
	dev    watch.Dev
	path   string // /dev/dm-N
	max    uint64
	log    zerolog.Logger
	kicked chan time.Time // when the crossing write was queued (or now)
	urgent atomic.Bool    // a VM ran out of space on it: extend at the next round, past or not
	looked bool           // the VMs using it were looked at after its first round
	stop   context.CancelFunc
	done   chan struct{} // closed when run returns

	mu sync.Mutex
	st VolumeStatus
}

func newVolume(a *Agent, d *domain, lv string, dev watch.Dev, log zerolog.Logger) (*volume, error) {
	id, err := mailbox.ParseUUID(lv)
	if err != nil {
		return nil, fmt.Errorf("the LV name is not a volume UUID: %w", err)
	}
	// The kernel's own node (devtmpfs makes it before the device's uevent goes
	// out), not /dev/mapper/VG-LV: udev may not have made that one yet.
	path, err := lvm.DeviceNode(dev.Major, dev.Minor)
	if err != nil {
		return nil, err
	}
	hdr, err := qcow2.ProbePath(path)
	var maxSize uint64
	switch {
	case err == nil:
		maxSize = d.Policy.maxSize(hdr.VirtualSize)
	case errors.Is(err, qcow2.ErrNotQcow2) && d.Raw && d.MaxRawSize > 0:
		maxSize = d.MaxRawSize
	case errors.Is(err, qcow2.ErrNotQcow2):
		return nil, errors.New("no qcow2 image on it (raw LVs are watched only when configured)")
	default:
		return nil, err
	}
	v := &volume{a: a, d: d, lv: lv, id: id, dev: dev, path: path, max: maxSize, log: log, kicked: make(chan time.Time, 1)}
	v.st = VolumeStatus{VG: d.VG, LV: lv, Device: path, MaxSize: maxSize, State: StateExtending, Since: time.Now()}
	return v, nil
}

// kick asks the volume's loop for a round; at is when the crossing write was
// queued (it times the detect phase). A kick while one waits is dropped: the
// round it waits for arms after this write, and Arm's Past tells of the write.
func (v *volume) kick(at time.Time) {
	select {
	case v.kicked <- at:
	default:
	}
}

func (v *volume) status() VolumeStatus {
	v.mu.Lock()
	defer v.mu.Unlock()
	st := v.st
	if st.Last != nil {
		last := *st.Last
		st.Last = &last
	}
	return st
}

func (v *volume) set(f func(*VolumeStatus)) {
	v.mu.Lock()
	f(&v.st)
	v.mu.Unlock()
}

// state sets the volume's state, logging a change of it.
func (v *volume) state(state string, err error) {
	v.mu.Lock()
	changed := v.st.State != state
	v.st.State, v.st.Error = state, ""
	if err != nil {
		v.st.Error = err.Error()
	}
	if changed {
		v.st.Since = time.Now()
	}
	v.mu.Unlock()
	if changed && state != StateArmed && state != StateExtending {
		v.log.Warn().Err(err).Str("state", state).Msg("volume state")
	}
}

// run serves the volume's rounds until ctx ends.
func (v *volume) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case at := <-v.kicked:
			v.serve(ctx, at)
			if !v.looked && ctx.Err() == nil {
				// A VM may have paused on it while no agent ran.
				v.looked = true
				v.a.resumer.check(v.dev, time.Time{})
			}
		}
	}
}

// Retries of a failed step wait 100 ms, doubling up to 10 s.
const (
	minRetry = 100 * time.Millisecond
	maxRetry = 10 * time.Second
)

// serve brings the volume to a size whose threshold no write has passed yet,
// extending it as often as that takes, and leaves it armed (or at its maximum).
func (v *volume) serve(ctx context.Context, crossed time.Time) {
	retry := backoff.New(minRetry, maxRetry)
	for ctx.Err() == nil {
		again, err := v.step(ctx, crossed)
		switch {
		case err != nil && ctx.Err() == nil:
			v.state(StateRetrying, err)
			select {
			case <-ctx.Done():
			case <-time.After(retry.Next()):
			}
		case again:
			// Writes are already past the new threshold: once more, at once.
			retry.Reset()
			crossed = time.Now()
		default:
			return
		}
	}
}

// step arms the volume at its size's threshold and, if writes are past it
// already (Arm says so: the crossing that kicked the loop, or writes while it
// was being extended), extends it. again is true when the extension left it
// past its new threshold too.
func (v *volume) step(ctx context.Context, crossed time.Time) (again bool, err error) {
	sz, err := blockdev.Size(v.path)
	if err != nil {
		return false, fmt.Errorf("size of %s: %w", v.path, err)
	}
	v.updateMax()
	prev := v.status().Size
	v.set(func(st *VolumeStatus) { st.Size = sz })
	past, err := v.arm(sz)
	if err != nil {
		return false, err
	}
	if v.urgent.Swap(false) && v.status().State == StateArmed {
		past = true
	}
	if !past {
		if prev != 0 && sz > prev {
			// Grown other than by an extension of this loop that ended well (by
			// hand, or by one whose check failed after its refresh): a VM may
			// wait for it.
			v.a.resumer.check(v.dev, time.Now())
		}
		return false, nil
	}
	return v.extend(ctx, sz, crossed)
}

// updateMax follows the image's virtual size (a disk resized live grows it):
// one 4 KiB read of its header per round.
func (v *volume) updateMax() {
	hdr, err := qcow2.ProbePath(v.path)
	if err != nil {
		return // raw, or unreadable now: the maximum stays
	}
	if m := v.d.Policy.maxSize(hdr.VirtualSize); m != v.max {
		v.log.Info().Str("from", size.Format(v.max)).Str("to", size.Format(m)).Msg("the image's virtual size changed: new maximum LV size")
		v.max = m
		v.set(func(st *VolumeStatus) { st.MaxSize = m })
	}
}

// arm arms the volume for size bytes, or disarms it at its maximum; past is
// true when writes are beyond the threshold already.
func (v *volume) arm(sz uint64) (past bool, err error) {
	if sz >= v.max {
		// Disarm forgets the highest write: kept for status, and for the look
		// at the VMs after the extension that got here.
		if high, err := v.a.w.High(v.dev); err == nil && high > 0 {
			v.set(func(st *VolumeStatus) { st.High = max(st.High, high) })
		}
		if _, err := v.a.w.Disarm(v.dev); err != nil {
			return false, fmt.Errorf("disarm %s: %w", v.dev, err)
		}
		v.state(StateAtMaximum, fmt.Errorf("the LV is at its maximum size, %s", size.Format(v.max)))
		return false, nil
	}
	thr, ok := v.d.Policy.threshold(sz)
	if !ok {
		return true, nil // less free space than the trigger already
	}
	armed, err := v.a.w.Arm(v.dev, thr)
	if err != nil {
		return false, fmt.Errorf("arm %s at %s: %w", v.dev, size.Format(thr), err)
	}
	v.set(func(st *VolumeStatus) { st.Threshold, st.High = thr, armed.High })
	if !armed.Past {
		v.state(StateArmed, nil)
	}
	return armed.Past, nil
}

// extend grows the volume from sz by one chunk: the request through the mailbox,
// the refresh of its table, the check of its real size, the re-arm.
func (v *volume) extend(ctx context.Context, sz uint64, crossed time.Time) (again bool, err error) {
	wasAtMax := v.status().State == StateAtMaximum
	v.state(StateExtending, nil)
	want := v.d.Policy.next(sz, v.max)
	ph := Phases{From: sz, To: want, Detect: time.Since(crossed)}
	t0 := time.Now()
	waited, err := v.request(ctx, want)
	if err != nil {
		v.failed(ctx, "request")
		return false, err
	}
	v.state(StateExtending, nil) // after a wait
	t1 := time.Now()
	ph.Request = t1.Sub(t0)
	res, err := v.a.ref.Refresh(ctx, v.d.VG, v.lv, v.d.pvs())
	if err != nil {
		v.failed(ctx, "refresh")
		return false, fmt.Errorf("refresh: %w", err)
	}
	v.d.setPVs(res.Devices)
	t2 := time.Now()
	ph.Refresh = t2.Sub(t1)
	// A vdsm SPM's reply carries the size asked for, not the LV's: the metadata tells.
	if res.NewSize < want {
		v.failed(ctx, "verify")
		return false, fmt.Errorf("the SPM granted %s but the LV has %s in the metadata", size.Format(want), size.Format(res.NewSize))
	}
	again, err = v.arm(res.NewSize)
	if err != nil {
		v.failed(ctx, "arm")
		return false, err
	}
	ph.Rearm = time.Since(t2)
	ph.To = res.NewSize
	ph.Total = time.Since(crossed)
	// A VM may be paused on it, and is looked at now that its new table is
	// live, if the LV was at its maximum (and the image grew), the request
	// waited or was slow, writes came close to its old end (High counts those
	// made during the extension too), or a VM said so.
	if wasAtMax || waited || ph.Request >= slowRequest || v.status().High+lateMargin >= sz || v.a.resumer.waitsOn(v.dev) {
		v.a.resumer.check(v.dev, t2)
	}
	v.set(func(st *VolumeStatus) { st.Extensions++; st.Size = res.NewSize; st.Last = &ph })
	v.a.metrics.observe(ph)
	v.log.Info().Str("from", size.Format(sz)).Str("to", size.Format(res.NewSize)).Dur("detect", ph.Detect).
		Dur("request", ph.Request).Dur("refresh", ph.Refresh).Dur("rearm", ph.Rearm).Dur("total", ph.Total).
		Bool("past_again", again).Msg("LV extended")
	return again, nil
}

// failed counts a step that failed; one cut short by the volume's end (dropped,
// or the agent closing) is no failure.
func (v *volume) failed(ctx context.Context, step string) {
	if ctx.Err() == nil {
		v.a.metrics.failed(step)
	}
}

// request asks the SPM for want bytes and waits for its answer as long as it
// takes: a full VG keeps the request with no reply until a PV is added. The wait
// makes the volume's state waiting after Config.WaitingAfter (waited says so);
// asking again joins the request standing in its slot.
func (v *volume) request(ctx context.Context, want uint64) (waited bool, err error) {
	for {
		rctx, cancel := context.WithTimeout(ctx, v.a.cfg.WaitingAfter)
		granted, err := v.d.host.Extend(rctx, v.d.id, v.id, want>>20)
		cancel()
		switch {
		case err == nil && granted<<20 >= want:
			return waited, nil
		case err == nil:
			return waited, fmt.Errorf("the SPM granted %d MiB, less than the %d MiB asked", granted, want>>20)
		case errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil:
			if !waited {
				v.a.resumer.check(v.dev, time.Time{}) // its VMs may be paused already: status shows them
			}
			waited = true
			v.state(StateWaiting, fmt.Errorf("no answer from the SPM for %s to %s (away, or the VG is full)", v.lv, size.Format(want)))
		default:
			return waited, fmt.Errorf("request %s: %w", size.Format(want), err)
		}
	}
}

// lateMargin: writes that came this close to an LV's end may have gone past it
// (a write past the end never reaches the block layer, so it is never seen).
const lateMargin = 1 << 20

// slowRequest: in a request this long a VM can have filled the rest of its LV
// with writes too big to come within lateMargin of the end (qcow2 allocates
// clusters, a guest writes megabytes at once).
const slowRequest = time.Second
