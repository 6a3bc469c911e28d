package spm

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/backoff"
	"github.com/lvwatch/lvwatch/internal/lvm"
	"github.com/lvwatch/lvwatch/internal/mailbox"
	"github.com/lvwatch/lvwatch/internal/size"
)

// readTimeout bounds one read of the VG's metadata (a dead path must not stall the SPM).
const readTimeout = 10 * time.Second

// job is one request handed over by the mailbox and not answered yet.
type job struct {
	ctx          context.Context
	req          mailbox.Request
	reply        *mailbox.Reply
	found        time.Time
	waitingSince time.Time   // when it first found no room; zero until then
	needBytes    uint64      // what it needs then
	unwake       func() bool // stops the wake-up on its context's end (answer calls it)
}

// domain serves one VG: a single worker goroutine takes the requests in the order
// they came, so that what arrives together runs back to back through one lvm shell
// (no process start, and LVM's VG lock is never contended by the SPM itself).
type domain struct {
	cfg    DomainConfig
	limits limits
	log    zerolog.Logger
	shell  *shell
	cache  *lvm.Cache
	kick   chan struct{}
	stop   chan struct{}
	done   chan struct{}

	// Owned by the worker.
	devices  []string
	pending  []*job          // waiting for space, oldest first
	readErr  bool            // the last VG read failed (logged once until one succeeds)
	retry    backoff.Backoff // the wait before the next read while reads fail
	retryAt  time.Time       // while reads fail: no read before this (the last read's end + retry)
	reads    int             // metadata reads (readVGOnce), for the tests
	sought   []string        // the missing PV ids last searched for, sorted
	soughtAt time.Time       // when
	warned   vgVersion       // the metadata whose missing PVs and warnings were logged
	judged   vgVersion       // the metadata d.pending was last judged against
	wrote    bool            // the last round ran an lvextend: the cached metadata is stale

	mu       sync.Mutex
	incoming []*job
	snap     DomainStatus
}

// DomainStatus is one domain's part of Status.
type DomainStatus struct {
	VG             string           `json:"vg"`
	Devices        []string         `json:"devices"`
	Seqno          uint64           `json:"seqno"`
	ExtentBytes    uint64           `json:"extent_bytes"`
	FreeBytes      uint64           `json:"free_bytes"`
	ReserveBytes   uint64           `json:"reserve_bytes"`
	WaitingOnSpace []WaitingRequest `json:"waiting_for_space"`
	Counters
}

// WaitingRequest is a request kept until the VG has room for it.
type WaitingRequest struct {
	Host      int       `json:"host"`
	Slot      int       `json:"slot"`
	Volume    string    `json:"volume"`
	SizeMiB   uint64    `json:"size_mib"`
	NeedBytes uint64    `json:"need_bytes"`
	Since     time.Time `json:"since"`
}

// Counters count a domain's requests since the SPM started. Each request answered
// adds to one of Extended, AlreadyLarge, Refused, Failed and Withdrawn.
type Counters struct {
	Requests       uint64 `json:"requests"`
	Extended       uint64 `json:"extended"`         // granted after an lvextend
	AlreadyLarge   uint64 `json:"already_large"`    // granted at once: the LV had the size
	Refused        uint64 `json:"refused"`          // failed validation
	Failed         uint64 `json:"failed"`           // LVM failed
	WaitedForSpace uint64 `json:"waited_for_space"` // found no room at first
	Withdrawn      uint64 `json:"withdrawn"`        // dropped before it was served
	LVMCommands    uint64 `json:"lvm_commands"`
}

func newDomain(cfg DomainConfig, lvmPath string, log zerolog.Logger) *domain {
	log = log.With().Str("vg", cfg.VG).Logger()
	d := &domain{
		cfg:     cfg,
		limits:  limits{maxLVBytes: cfg.MaxLVSize},
		log:     log,
		shell:   newShell(lvmPath, log),
		cache:   lvm.NewCache(),
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		done:    make(chan struct{}),
		devices: cfg.Devices,
		retry:   backoff.New(minRetry, maxRetry),
	}
	d.snap.VG = cfg.VG
	d.snap.ReserveBytes = cfg.Reserve
	return d
}

// enqueue takes a request from the mailbox; it returns at once.
func (d *domain) enqueue(ctx context.Context, req mailbox.Request, reply *mailbox.Reply) {
	// A withdrawn request waiting for space is answered (dropped) at once. The
	// mailbox also ends the context of each request it has the answer of: that
	// wake-up is stopped once the worker answers (no round for nothing).
	j := &job{ctx: ctx, req: req, reply: reply, found: time.Now(), unwake: context.AfterFunc(ctx, d.wake)}
	d.mu.Lock()
	d.incoming = append(d.incoming, j)
	d.snap.Requests++
	d.mu.Unlock()
	d.wake()
}

// Reads that fail are retried after 10 ms, doubling up to a second.
const (
	minRetry = 10 * time.Millisecond
	maxRetry = time.Second
)

func (d *domain) wake() {
	select {
	case d.kick <- struct{}{}:
	default:
	}
}

func (d *domain) close() {
	close(d.stop)
	<-d.done
	d.shell.Close()
}

// stopping reports whether the SPM is closing: the worker starts no more LVM commands.
func (d *domain) stopping() bool {
	select {
	case <-d.stop:
		return true
	default:
		return false
	}
}

func (d *domain) count(f func(*Counters)) {
	d.mu.Lock()
	f(&d.snap.Counters)
	d.mu.Unlock()
}

func (d *domain) status() DomainStatus {
	d.mu.Lock()
	defer d.mu.Unlock()
	st := d.snap
	st.Devices = slices.Clone(st.Devices)
	st.WaitingOnSpace = slices.Clone(st.WaitingOnSpace)
	return st
}

func (d *domain) run() {
	defer close(d.done)
	defer d.abandon()
	var poll <-chan time.Time
	for {
		select {
		case <-d.stop:
			return
		case <-d.kick:
		case <-poll:
		}
		if d.stopping() {
			return // select picks at random among ready cases: stop goes first
		}
		poll = nil
		if wait := d.round(); wait > 0 {
			poll = time.After(wait)
		}
	}
}

// round serves what the worker was woken for and returns when to look again (0:
// only when woken). Polls only while requests wait (a new one kicks the worker);
// while the VG cannot be read (with no devices, each read is a full scan), no read
// runs before d.retryAt: new requests and withdrawals that wake the worker then are
// queued or answered without one.
func (d *domain) round() time.Duration {
	if d.readErr && time.Now().Before(d.retryAt) {
		d.hold()
	} else {
		d.serve()
		d.refresh()
	}
	switch {
	case len(d.pending) == 0:
		return 0
	case d.readErr:
		return max(d.cfg.SpacePoll, time.Until(d.retryAt), time.Nanosecond)
	default:
		return d.cfg.SpacePoll
	}
}

// hold queues what came while reads back off, answering only the withdrawn.
func (d *domain) hold() {
	d.mu.Lock()
	incoming := d.incoming
	d.incoming = nil
	d.mu.Unlock()
	d.pending = d.dropWithdrawn(append(d.pending, incoming...))
	d.publish(nil, space{})
}

// refresh reads the VG's metadata again after a round that changed it, while no
// request is queued: the read the next round would do (the whole metadata, the
// cache seeing the header moved), done between requests instead of before the
// next. The next round still checks the header: a change by anyone since is seen.
func (d *domain) refresh() {
	if !d.wrote || d.stopping() {
		return
	}
	d.mu.Lock()
	queued := len(d.incoming) > 0
	d.mu.Unlock()
	if queued {
		return // the next round reads it at once
	}
	d.wrote = false
	if vg, _, err := d.readVG(); err == nil {
		d.publish(vg, vgSpace(vg, d.cfg.Reserve))
	}
}

// abandon answers what is left when the SPM stops: the mailbox has withdrawn it
// already (the answer is dropped), and the request stays in the inbox.
func (d *domain) abandon() {
	d.mu.Lock()
	left := append(d.pending, d.incoming...)
	d.incoming = nil
	d.mu.Unlock()
	for _, j := range left {
		d.answer(j, withdrawn, 0, errors.New("SPM stopping"))
	}
}

// serve runs one round: the requests waiting for space, oldest first, then the new
// ones. The waiting ones are looked at again only when the VG's metadata differs
// from the version they were judged against (one header read tells); one that does
// not fit never holds back the others.
func (d *domain) serve() {
	d.mu.Lock()
	incoming := d.incoming
	d.incoming = nil
	d.mu.Unlock()

	d.pending = d.dropWithdrawn(d.pending)
	incoming = d.dropWithdrawn(incoming)
	vg, _, err := d.readVG()
	if err != nil {
		d.judged = vgVersion{} // the requests put back now were judged against nothing
		if !d.readErr {
			d.log.Error().Err(err).Msg("cannot read the VG's metadata; requests wait until it reads again")
		}
		d.readErr = true
		d.retryAt = time.Now().Add(d.retry.Next())
		d.pending = append(d.pending, incoming...)
		d.publish(nil, space{})
		return
	}
	if d.readErr {
		d.log.Info().Msg("VG metadata readable again")
		d.readErr = false
	}
	d.retry.Reset()
	// Not the cache's "changed": a read within the last round (after a failed
	// lvextend) may have seen the change already, and requests put back then were
	// judged against the round's older metadata.
	if len(incoming) == 0 && versionOf(vg) == d.judged {
		d.publish(vg, vgSpace(vg, d.cfg.Reserve))
		return
	}
	d.judged = versionOf(vg)
	jobs := append(d.pending, incoming...)
	d.pending = nil
	sp := vgSpace(vg, d.cfg.Reserve)
	extents := map[string]uint64{} // LV sizes this round changed, ahead of vg
	for i, j := range jobs {
		if d.stopping() {
			// The rest stays for abandon: the mailbox has withdrawn it.
			d.pending = append(d.pending, jobs[i:]...)
			break
		}
		d.serveOne(j, vg, &sp, extents)
	}
	d.publish(vg, sp)
}

func (d *domain) dropWithdrawn(jobs []*job) []*job {
	return slices.DeleteFunc(jobs, func(j *job) bool {
		if j.ctx.Err() == nil {
			return false
		}
		d.answer(j, withdrawn, 0, context.Cause(j.ctx))
		return true
	})
}

// serveOne answers j, extends its LV, or keeps it in d.pending.
func (d *domain) serveOne(j *job, vg *lvm.VG, sp *space, extents map[string]uint64) {
	volume := j.req.Volume.String()
	log := d.log.With().Int("host", j.req.HostID).Int("slot", j.req.Slot).Str("volume", volume).Uint64("size_mib", j.req.SizeMiB).Logger()
	lv, want, err := d.limits.target(vg, *sp, volume, j.req.SizeMiB)
	if err != nil {
		d.answer(j, refused, 0, fmt.Errorf("volume %s to %d MiB: %w", volume, j.req.SizeMiB, err)) // the mailbox logs it
		return
	}
	have, ok := extents[volume]
	if !ok {
		have = lv.Extents()
	}
	if want <= have {
		d.grant(j, alreadyLarge, have, sp, log)
		return
	}
	need := want - have
	switch {
	case need <= sp.available():
	case need <= sp.free && j.waitingSince.IsZero():
		// It fits only by taking the reserve: refused. One that does not fit at all
		// waits for a PV, and once waiting it waits until it fits beside the reserve.
		d.answer(j, refused, 0, fmt.Errorf("volume %s to %d MiB: %w", volume, j.req.SizeMiB, refuse("%s more would eat into the VG's reserve of %s (%s free)",
			size.Format(need*sp.extentBytes), size.Format(d.cfg.Reserve), size.Format(sp.free*sp.extentBytes))))
		return
	default:
		d.wait(j, need, *sp, log)
		return
	}
	if j.ctx.Err() != nil {
		// Withdrawn while the round ran (the host gave up, or the SPM is closing):
		// no lvextend for it. Answered all the same, as the mailbox requires.
		d.dropWithdrawn([]*job{j})
		return
	}
	// Not under j.ctx: a host giving up must never stop LVM mid-command.
	err = d.extend(volume, want)
	if err != nil {
		// The outcome is what the metadata says (the shell may have died after the commit).
		fresh, _, rerr := d.readVG()
		if rerr == nil {
			if flv, lerr := fresh.LV(volume); lerr == nil && flv.Extents() >= want {
				err = nil
			} else if fsp := vgSpace(fresh, d.cfg.Reserve); need > fsp.available() {
				*sp = fsp
				d.wait(j, need, fsp, log.With().AnErr("lvextend", err).Logger())
				return
			}
		}
	}
	if err != nil {
		d.answer(j, failed, 0, fmt.Errorf("volume %s to %d MiB: %w", volume, j.req.SizeMiB, err))
		return
	}
	extents[volume] = want
	sp.free -= min(need, sp.free)
	d.grant(j, extended, want, sp, log)
}

// wait keeps j until the VG has room for it; the first time is logged and counted.
func (d *domain) wait(j *job, need uint64, sp space, log zerolog.Logger) {
	if j.waitingSince.IsZero() {
		j.waitingSince, j.needBytes = time.Now(), need*sp.extentBytes
		d.count(func(c *Counters) { c.WaitedForSpace++ })
		log.Info().Str("need", size.Format(need*sp.extentBytes)).Str("free", size.Format(sp.free*sp.extentBytes)).
			Str("reserve", size.Format(sp.reserve*sp.extentBytes)).Msg("no room in the VG: request waits for space (add a PV)")
	}
	d.pending = append(d.pending, j)
}

// grant answers success with the LV's size in whole MiB (≥ the size asked: the
// LV has at least the extents that size needs).
func (d *domain) grant(j *job, o outcome, extents uint64, sp *space, log zerolog.Logger) {
	sizeMiB := min(extents*sp.extentBytes>>20, mailbox.MaxSizeMiB)
	if err := d.answer(j, o, sizeMiB, nil); err != nil {
		// Withdrawn (the answer dropped: the LV has the size all the same), or the
		// size refused by the mailbox (failed instead).
		log.Debug().Err(err).Uint64("size_mib_now", sizeMiB).Msg("request not granted")
		return
	}
	ev := log.Debug()
	if !j.waitingSince.IsZero() {
		ev = log.Info().Dur("waited", time.Since(j.waitingSince))
	}
	ev.Uint64("granted_mib", sizeMiB).Dur("took", time.Since(j.found)).Msg("extend granted")
}

// outcome is what a request's answer counts as: one counter each.
type outcome int

const (
	extended outcome = iota
	alreadyLarge
	refused
	failed
	withdrawn
)

func (c *Counters) add(o outcome) {
	switch o {
	case extended:
		c.Extended++
	case alreadyLarge:
		c.AlreadyLarge++
	case refused:
		c.Refused++
	case failed:
		c.Failed++
	case withdrawn:
		c.Withdrawn++
	}
}

// answer is the one way the worker answers j: Grant of sizeMiB when reason is nil,
// else Fail. It stops j's wake-up first (answering ends j's context in the mailbox,
// which would wake the worker for a round for nothing), and counts j once: as o
// (what the SPM did, even when the host withdrew the request and the answer is
// dropped), or as failed when Grant refused the size (then it fails j: the host
// must not wait forever). It returns the answer's error.
func (d *domain) answer(j *job, o outcome, sizeMiB uint64, reason error) error {
	j.unwake()
	var err error
	if reason != nil {
		err = j.reply.Fail(reason)
	} else if err = j.reply.Grant(sizeMiB); err != nil && !errors.Is(err, mailbox.ErrWithdrawn) {
		o = failed
		err = j.reply.Fail(err)
	}
	d.count(func(c *Counters) { c.add(o) })
	return err
}

// extend runs lvextend to exactly want extents, seeing only the domain's PVs.
// When the lvm shell dies under the command (killed, or crashed: lvm 2.03.16's
// shell segfaults on some command lines), the metadata tells whether it took
// effect; if it did not, the command runs once more, in a new shell.
func (d *domain) extend(volume string, want uint64) error {
	err := d.lvextend(volume, want)
	if !errors.Is(err, errShellDied) || d.stopping() {
		return err
	}
	vg, _, rerr := d.readVG()
	if rerr != nil {
		return err
	}
	if lv, lerr := vg.LV(volume); lerr != nil || lv.Extents() >= want {
		return err // the caller reads the metadata and answers from it
	}
	d.log.Warn().Err(err).Str("volume", volume).Msg("the lvm shell died before the extend took effect; running it once more")
	return d.lvextend(volume, want)
}

func (d *domain) lvextend(volume string, want uint64) error {
	d.count(func(c *Counters) { c.LVMCommands++ })
	d.wrote = true // even when it fails: lvm may have committed before failing
	args := append([]string{"lvextend"}, lvmArgs(d.devices)...)
	return d.shell.run(append(args, "-l", strconv.FormatUint(want, 10), d.cfg.VG+"/"+volume)...)
}

// readVG reads the VG's metadata through the cache (one header read when nothing
// changed) and reports whether it changed since the last read. PVs the metadata
// names but the devices do not hold (an operator's vgextend) are looked for: at the
// device the metadata records for them, or by a scan when no devices are configured.
func (d *domain) readVG() (*lvm.VG, bool, error) {
	vg, changed, err := d.readVGOnce()
	if err == nil && changed {
		d.warnMissing(vg)
	}
	return vg, changed, err
}

// vgVersion tells one version of a VG's metadata from another.
type vgVersion struct {
	id    string
	seqno uint64
}

func versionOf(vg *lvm.VG) vgVersion { return vgVersion{vg.ID, vg.Seqno} }

// warnMissing logs, once per metadata version, the PVs the metadata names but
// this host did not find, and what else the read found wrong. Missing PVs are
// looked for again when the set missing changes, or searchAgain after the last search (readVGOnce).
func (d *domain) warnMissing(vg *lvm.VG) {
	if versionOf(vg) == d.warned {
		return
	}
	d.warned = versionOf(vg)
	for _, pv := range vg.PVs {
		if pv.Device == "" {
			d.log.Warn().Str("pv_uuid", pv.ID).Str("device_hint", pv.DeviceHint).Uint64("seqno", vg.Seqno).
				Msg("a PV of the VG was not found on this host: its space is not used until it is; " +
					"list its device in the domain's devices setting if its path here is not the hint")
		}
	}
	for _, w := range vg.Warnings {
		d.log.Warn().Str("warning", w).Uint64("seqno", vg.Seqno).Msg("VG metadata read")
	}
}

func (d *domain) readVGOnce() (*lvm.VG, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), readTimeout)
	defer cancel()
	d.reads++
	if d.devices == nil {
		return d.scan(ctx)
	}
	vg, cached, err := d.cache.ReadVG(ctx, d.cfg.VG, d.devices)
	if err != nil {
		return nil, false, err
	}
	if cached || !missingPVs(vg) {
		return vg, !cached, nil
	}
	if !d.searchDue(vg, time.Now()) {
		return vg, true, nil // searched for these already, a moment ago
	}
	if d.cfg.Devices == nil {
		return d.scan(ctx)
	}
	devices := slices.Clone(d.devices)
	for _, pv := range vg.PVs {
		if pv.Device == "" && pv.DeviceHint != "" && !slices.Contains(devices, pv.DeviceHint) {
			devices = append(devices, pv.DeviceHint)
		}
	}
	if len(devices) > len(d.devices) {
		if full, err := lvm.ReadVG(ctx, d.cfg.VG, devices); err == nil && len(full.DevicePaths()) > len(vg.DevicePaths()) {
			d.adopt(full)
			return full, true, nil
		}
	}
	return vg, true, nil // lvm will say what is missing
}

// scan finds the VG's PVs among the block devices lvm would scan.
func (d *domain) scan(ctx context.Context) (*lvm.VG, bool, error) {
	hc, err := lvm.LoadHostConfig()
	if err != nil {
		return nil, false, err
	}
	vg, err := lvm.ScanVG(ctx, d.cfg.VG, hc)
	if err != nil {
		return nil, false, err
	}
	d.adopt(vg)
	return vg, true, nil
}

// adopt makes the devices vg was found on the domain's devices.
func (d *domain) adopt(vg *lvm.VG) {
	devices := vg.DevicePaths()
	if !slices.Equal(devices, d.devices) {
		d.log.Info().Strs("devices", devices).Strs("before", d.devices).Msg("the domain's PVs changed")
	}
	d.devices = devices
	d.cache.Put(vg, devices)
}

// searchAgain is how often PVs still missing are searched for again while the
// metadata changes (each change, the SPM's own extends included, would otherwise
// cost a search: a full scan with no devices configured).
const searchAgain = 5 * time.Second

// searchDue reports whether the PVs vg misses are to be searched for now: when they
// are not the ones searched for last, or that was searchAgain ago; it records the search.
func (d *domain) searchDue(vg *lvm.VG, now time.Time) bool {
	var ids []string
	for _, pv := range vg.PVs {
		if pv.Device == "" {
			ids = append(ids, pv.ID)
		}
	}
	slices.Sort(ids)
	if slices.Equal(ids, d.sought) && now.Sub(d.soughtAt) < searchAgain {
		return false
	}
	d.sought, d.soughtAt = ids, now
	return true
}

func missingPVs(vg *lvm.VG) bool {
	return slices.ContainsFunc(vg.PVs, func(pv lvm.PV) bool { return pv.Device == "" })
}

// publish updates the status snapshot.
func (d *domain) publish(vg *lvm.VG, sp space) {
	var waiting []WaitingRequest
	for _, j := range d.pending {
		waiting = append(waiting, WaitingRequest{Host: j.req.HostID, Slot: j.req.Slot, Volume: j.req.Volume.String(),
			SizeMiB: j.req.SizeMiB, NeedBytes: j.needBytes, Since: j.waitingSince})
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.snap.WaitingOnSpace = waiting
	d.snap.Devices = slices.Clone(d.devices)
	if vg != nil {
		d.snap.Seqno, d.snap.ExtentBytes, d.snap.FreeBytes = vg.Seqno, sp.extentBytes, sp.free*sp.extentBytes
	}
}
