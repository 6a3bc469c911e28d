package mailbox

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lvwatch/lvwatch/internal/backoff"
	"github.com/lvwatch/lvwatch/internal/process"
	"github.com/rs/zerolog"
)

// HostConfig configures a Host. Zero or negative durations take the defaults.
type HostConfig struct {
	Inbox, Outbox string // paths of the volumes (the host writes the inbox, reads the outbox)
	HostID        int    // 1..249
	Log           zerolog.Logger

	// While requests are in flight the host polls its reply mailbox every PollMin at
	// first, then every 1/8 of the time it has waited, at most every PollMax. With nothing
	// in flight it does no I/O.
	PollMin, PollMax time.Duration

	// AbandonAfter bounds how long an unanswered request keeps its slot once no caller
	// waits for it: the host withdraws (clears) it when every caller has given up and it
	// is that old, so that requests no SPM answers cannot fill all 63 slots.
	AbandonAfter time.Duration

	// TakeOver clears the mailbox even when it holds another writer's requests (see
	// OpenHost): for an id whose writer is known to be gone for good.
	TakeOver bool
	// IgnoreSignatures opens volumes that carry a known signature (VolumeOptions).
	IgnoreSignatures bool
}

// Defaults of HostConfig.
const (
	DefaultPollMin = 200 * time.Microsecond
	DefaultPollMax = 100 * time.Millisecond
	// DefaultAbandonAfter is well above the time an SPM takes to extend a volume (vdsm:
	// seconds, under load tens of seconds), so that a slow answer is not thrown away.
	DefaultAbandonAfter = 2 * time.Minute
	hostPollRatio       = 8
	// withdrawnQuiet is how long a withdrawn request's slot stays empty before the
	// same request may go into it again: longer than vdsm's full scan of the inbox
	// (2 s), so that a vdsm SPM sees the slot empty and then the request as new,
	// rather than the same bytes it saw before and ignores.
	withdrawnQuiet = 10 * time.Second
)

// Errors of Host.Extend.
var (
	ErrExtendFailed = errors.New("the SPM answered failure")
	ErrClosed       = errors.New("mailbox host closed")
)

// HostStats counts a host's work since it started.
type HostStats struct {
	Polls     uint64 // 4 KiB reads of the reply mailbox
	Writes    uint64 // writes of the request mailbox (each followed by an events block)
	IOErrors  uint64
	Requests  uint64 // requests written into a slot
	Coalesced uint64 // Extend calls that joined an identical request in flight
	Replies   uint64
	Withdrawn uint64 // requests cleared unanswered after every caller gave up (AbandonAfter)
}

type hostCounters struct {
	polls, writes, ioErrors, requests, coalesced, replies, withdrawn atomic.Uint64
}

// Host is one host's side of the mailbox. Extend may be called from many goroutines;
// up to 63 requests are in flight at once, identical ones share a slot, the rest wait.
type Host struct {
	id      int
	log     zerolog.Logger
	in      *Volume
	out     *Volume
	pace    pacer
	abandon time.Duration
	stats   hostCounters
	done    chan struct{}
	signal  chan struct{}       // new calls, pokes, close
	spm     atomic.Pointer[SPM] // a co-located SPM to wake after each write (AddLocal)

	closeOnce sync.Once
	closeErr  error

	mu       sync.Mutex
	calls    []*call
	left     []*call // calls whose caller gave up
	poked    bool
	closeCtx context.Context // set by Close

	// Owned by the loop.
	mbox      Mailbox // our inbox mailbox as we want it on disk
	outbox    Mailbox // our outbox mailbox as last read
	wbuf      []byte  // aligned, BlockSize
	rbuf      []byte  // aligned, BlockSize
	slots     [MessagesPerMbox]hostSlot
	queue     []*request           // waiting for a free slot
	byMsg     map[Message]*request // queued or in flight, not yet answered: for coalescing
	dirty     bool                 // mbox differs from what is on disk
	lastSend  time.Time
	sendWait  backoff.Backoff
	retryAt   time.Time // no send before this, after a write failed
	readWait  backoff.Backoff
	readPause time.Time // no poll before this, after a read failed
}

type call struct {
	msg  Message
	size uint64
	res  chan result
}

type result struct {
	granted uint64
	err     error
}

type request struct {
	msg     Message
	size    uint64
	waiters []chan result
	placed  time.Time // when it was written into its slot
}

type slotState int

const (
	slotFree      slotState = iota
	slotRequested           // request written, waiting for the reply
	slotAcked               // CLEAN written, waiting for the SPM to echo it
)

type hostSlot struct {
	state slotState
	req   *request // nil for a slot acked only to clear a stale reply
	// What a free slot held when its request was withdrawn, and when.
	withdrawn   Message
	withdrawnAt time.Time
}

// OpenHost opens the volumes and starts the host loop, which first clears the host's
// mailbox: the requests of an earlier run of this host are void.
//
// Unless cfg.TakeOver, it refuses (ErrHostIDInUse) a mailbox whose checksum holds and
// that carries messages of another writer: vdsm, another lvwatch, or an lvwatch of this
// machine that still runs (see claim). lvwatch marks what it writes with its process's
// identity (Owner), so a host restarted after a crash recognises its own requests and
// clears them. The check and the first write are not atomic: two processes started with
// one id at the same instant can still both pass it.
func OpenHost(cfg HostConfig) (*Host, error) {
	if err := ValidHostID(cfg.HostID); err != nil {
		return nil, fmt.Errorf("mailbox host: %w", err)
	}
	in, out, err := openVolumes(cfg.Inbox, cfg.Outbox, VolumeOptions{IgnoreSignatures: cfg.IgnoreSignatures})
	if err != nil {
		return nil, fmt.Errorf("mailbox host %d: %w", cfg.HostID, err)
	}
	log := cfg.Log.With().Str("mailbox", "host").Int("host", cfg.HostID).Logger()
	self := currentOwner()
	if err := checkOwner(in, cfg.HostID, self, cfg.TakeOver, log); err != nil {
		in.Close()
		out.Close()
		return nil, err
	}
	pollMin := orDefault(cfg.PollMin, DefaultPollMin)
	h := &Host{
		id:       cfg.HostID,
		log:      log,
		in:       in,
		out:      out,
		pace:     pacer{min: pollMin, max: max(orDefault(cfg.PollMax, DefaultPollMax), pollMin), ratio: hostPollRatio},
		abandon:  orDefault(cfg.AbandonAfter, DefaultAbandonAfter),
		done:     make(chan struct{}),
		signal:   make(chan struct{}, 1),
		wbuf:     AlignedBuffer(BlockSize),
		rbuf:     AlignedBuffer(BlockSize),
		byMsg:    map[Message]*request{},
		sendWait: newBackoff(),
		readWait: newBackoff(),
	}
	h.mbox.setOwner(self)
	go h.run()
	return h, nil
}

// checkOwner reads host id's mailbox and fails unless claim lets self clear it or
// takeOver is set.
func checkOwner(in *Volume, id int, self Owner, takeOver bool, log zerolog.Logger) error {
	buf := AlignedBuffer(BlockSize)
	if err := in.ReadAt(buf, blockOffset(id)); err != nil {
		return fmt.Errorf("mailbox host %d: reading its mailbox to see who uses it: %w", id, err)
	}
	err := claim(id, (*Mailbox)(buf), self, process.Alive)
	if err != nil && takeOver {
		log.Warn().Err(err).Msg("taking the host id over: erasing the messages in its mailbox")
		return nil
	}
	return err
}

// Extend asks the SPM to extend volume in domain to sizeMiB and waits for the reply. It
// returns the size granted (at least sizeMiB), or ErrExtendFailed when the SPM failed.
// A vdsm SPM's reply carries the size asked for, not the volume's real size: callers
// check the size themselves after the refresh (the agent does).
//
// A caller that gives up (ctx) leaves the request in its slot, where another call for
// the same request joins it; once no caller waits and it has been in its slot for
// AbandonAfter, the host withdraws it.
func (h *Host) Extend(ctx context.Context, domain, volume UUID, sizeMiB uint64) (uint64, error) {
	if sizeMiB == 0 {
		return 0, errors.New("extend to 0 MiB: a size of 0 is the failure reply")
	}
	msg, err := Extend{Domain: domain, Volume: volume, SizeMiB: sizeMiB}.Encode()
	if err != nil {
		return 0, err
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	c := &call{msg: msg, size: sizeMiB, res: make(chan result, 1)}
	h.mu.Lock()
	closed := h.closeCtx != nil
	if !closed {
		h.calls = append(h.calls, c)
	}
	h.mu.Unlock()
	if closed {
		return 0, ErrClosed
	}
	h.poke()
	select {
	case r := <-c.res:
		return r.granted, r.err
	case <-ctx.Done():
		h.mu.Lock()
		h.left = append(h.left, c)
		h.mu.Unlock()
		h.poke()
		return 0, ctx.Err()
	}
}

// Poke makes the host read its replies now: a co-located SPM calls it after writing.
func (h *Host) Poke() {
	h.mu.Lock()
	h.poked = true
	h.mu.Unlock()
	h.poke()
}

// Stats returns the host's counters.
func (h *Host) Stats() HostStats {
	c := &h.stats
	return HostStats{Polls: c.polls.Load(), Writes: c.writes.Load(), IOErrors: c.ioErrors.Load(),
		Requests: c.requests.Load(), Coalesced: c.coalesced.Load(), Replies: c.replies.Load(), Withdrawn: c.withdrawn.Load()}
}

// Close stops taking requests, lets the answered ones finish their clean handshake until
// ctx ends, then clears the mailbox, which withdraws the unanswered ones: their callers
// get ErrClosed.
func (h *Host) Close(ctx context.Context) error {
	h.mu.Lock()
	if h.closeCtx == nil {
		h.closeCtx = ctx
	}
	h.mu.Unlock()
	h.poke()
	<-h.done
	h.closeOnce.Do(func() { h.closeErr = errors.Join(h.in.Close(), h.out.Close()) })
	return h.closeErr
}

func (h *Host) poke() {
	select {
	case h.signal <- struct{}{}:
	default:
	}
}

func (h *Host) run() {
	defer close(h.done)
	if !h.start() {
		h.failAll(ErrClosed)
		return
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		h.mu.Lock()
		calls, left, poked, closeCtx := h.calls, h.left, h.poked, h.closeCtx
		h.calls, h.left, h.poked = nil, nil, false
		h.mu.Unlock()

		if closeCtx != nil {
			for _, c := range calls {
				c.res <- result{err: ErrClosed}
			}
			h.failQueued(ErrClosed)
		} else {
			h.take(calls)
		}
		h.leave(left)
		if poked {
			h.poll()
		}
		now := time.Now()
		h.withdrawAbandoned(now)
		h.place()
		if h.dirty && !now.Before(h.retryAt) {
			h.send(now)
		}
		if closeCtx != nil && (!h.acking() || closeCtx.Err() != nil) {
			h.shutdown()
			return
		}

		var next time.Time
		if h.inFlight() {
			next = notBefore(now.Add(h.pace.interval(now.Sub(h.lastSend))), h.readPause)
		}
		if h.dirty {
			next = earliest(next, h.retryAt)
		}
		var fired <-chan time.Time
		if !next.IsZero() {
			timer.Reset(time.Until(next))
			fired = timer.C
		}
		var closing <-chan struct{}
		if closeCtx != nil {
			closing = closeCtx.Done()
		}
		select {
		case <-h.signal:
		case <-closing:
		case <-fired:
			if h.inFlight() {
				h.poll()
			}
		}
	}
}

// start reads the reply mailbox (to know which slots hold stale replies) and clears the
// request mailbox, leaving only the owner mark, retrying until both work; false if the
// host was closed first.
func (h *Host) start() bool {
	wait := newBackoff()
	for {
		err := h.readOutbox()
		if err == nil {
			err = h.write()
		}
		if err == nil {
			h.log.Info().Msg("mailbox host started")
			return true
		}
		h.stats.ioErrors.Add(1)
		d := wait.Next()
		h.log.Error().Err(err).Dur("retry_in", d).Msg("cannot clear the host's mailbox")
		h.mu.Lock()
		closing := h.closeCtx != nil
		h.mu.Unlock()
		if closing {
			return false
		}
		select {
		case <-time.After(d):
		case <-h.signal:
		}
	}
}

// take queues new calls, joining identical requests that are queued or in flight.
func (h *Host) take(calls []*call) {
	for _, c := range calls {
		if r := h.byMsg[c.msg]; r != nil {
			r.waiters = append(r.waiters, c.res)
			h.stats.coalesced.Add(1)
			continue
		}
		r := &request{msg: c.msg, size: c.size, waiters: []chan result{c.res}}
		h.byMsg[c.msg] = r
		h.queue = append(h.queue, r)
	}
}

// leave drops the callers that gave up from their requests' waiters; a queued request
// left with none is dropped, as it was never written.
func (h *Host) leave(calls []*call) {
	for _, c := range calls {
		r := h.byMsg[c.msg]
		if r == nil {
			continue // answered meanwhile
		}
		r.waiters = slices.DeleteFunc(r.waiters, func(w chan result) bool { return w == c.res })
		if len(r.waiters) == 0 {
			if i := slices.Index(h.queue, r); i >= 0 {
				h.queue = slices.Delete(h.queue, i, i+1)
				delete(h.byMsg, r.msg)
			}
		}
	}
}

// withdrawAbandoned clears the slots of requests no caller waits for any more and that
// have been unanswered for h.abandon.
func (h *Host) withdrawAbandoned(now time.Time) {
	for i := range h.slots {
		s := &h.slots[i]
		if s.state != slotRequested || len(s.req.waiters) > 0 || now.Sub(s.req.placed) < h.abandon {
			continue
		}
		h.log.Warn().Int("slot", i).Dur("unanswered_for", now.Sub(s.req.placed)).Hex("request", s.req.msg[:]).
			Msg("withdrawing a request no SPM answered and no caller waits for")
		delete(h.byMsg, s.req.msg)
		h.mbox.SetSlot(i, Message{})
		*s = hostSlot{withdrawn: s.req.msg, withdrawnAt: now}
		h.dirty = true
		h.stats.withdrawn.Add(1)
	}
}

// place puts queued requests into free slots. A request never goes into a slot whose
// reply mailbox still holds a reply for the same volume (left by an earlier run, or a
// stale answer): a vdsm peer would not see a new reply there, and we could not tell it
// from the old. When only such slots are free, one is cleared with a CLEAN handshake.
func (h *Host) place() {
	if len(h.queue) == 0 {
		return
	}
	if h.freeSlot(nil) >= 0 {
		// Refresh the view of stale replies before choosing; failing that, the last one does.
		h.poll()
	}
	for len(h.queue) > 0 {
		r := h.queue[0]
		slot := h.freeSlot(&r.msg)
		if slot < 0 {
			if stale := h.freeSlot(nil); stale >= 0 && !h.cleaning() {
				h.mbox.SetSlot(stale, CleanMessage)
				h.slots[stale] = hostSlot{state: slotAcked}
				h.dirty = true
			}
			return
		}
		h.queue = h.queue[1:]
		r.placed = time.Now()
		h.mbox.SetSlot(slot, r.msg)
		h.slots[slot] = hostSlot{state: slotRequested, req: r}
		h.dirty = true
		h.stats.requests.Add(1)
		h.log.Debug().Int("slot", slot).Hex("request", r.msg[:]).Msg("extend request")
	}
}

// freeSlot returns the first free slot whose reply mailbox does not answer msg
// and that did not hold msg when it was withdrawn lately (any free slot for nil),
// or -1.
func (h *Host) freeSlot(msg *Message) int {
	for i := range h.slots {
		s := &h.slots[i]
		if s.state != slotFree {
			continue
		}
		if msg == nil {
			return i
		}
		if out := h.outbox.Slot(i); !replyTo(&out, msg) && (s.withdrawn != *msg || time.Since(s.withdrawnAt) > withdrawnQuiet) {
			return i
		}
	}
	return -1
}

// cleaning reports whether a stale reply is being cleared already.
func (h *Host) cleaning() bool {
	for _, s := range h.slots {
		if s.state == slotAcked && s.req == nil {
			return true
		}
	}
	return false
}

// acking reports whether a slot waits for the SPM to echo its CLEAN.
func (h *Host) acking() bool {
	for _, s := range h.slots {
		if s.state == slotAcked {
			return true
		}
	}
	return false
}

func (h *Host) inFlight() bool {
	for _, s := range h.slots {
		if s.state != slotFree {
			return true
		}
	}
	return false
}

// poll reads the reply mailbox and advances the handshake of every slot in flight.
// After a failure, polls pause for a backoff that grows while the failures last.
func (h *Host) poll() {
	if err := h.readOutbox(); err != nil {
		h.stats.ioErrors.Add(1)
		wait := h.readWait.Next()
		h.readPause = time.Now().Add(wait)
		h.log.Warn().Err(err).Dur("retry_in", wait).Msg("cannot read replies")
		return
	}
	h.readWait.Reset()
	h.advance()
}

// advance moves each slot in flight along the handshake as the reply mailbox shows.
func (h *Host) advance() {
	for i := range h.slots {
		s := &h.slots[i]
		out := h.outbox.Slot(i)
		switch s.state {
		case slotRequested:
			if replyTo(&out, &s.req.msg) && h.answer(i, s.req, out) {
				h.mbox.SetSlot(i, CleanMessage)
				s.state = slotAcked
				h.dirty = true
			}
		case slotAcked:
			if out == CleanMessage {
				h.mbox.SetSlot(i, Message{})
				*s = hostSlot{}
				h.dirty = true
			}
		}
	}
}

// answer delivers the reply out for the request in slot; false for a stale reply (a
// smaller size than asked, from an earlier request for the same volume), which is left
// alone until the real one replaces it.
func (h *Host) answer(slot int, r *request, out Message) bool {
	res := result{err: ErrExtendFailed}
	e, err := DecodeExtend(out)
	switch {
	case err != nil:
		h.log.Warn().Err(err).Int("slot", slot).Msg("malformed reply taken as failure")
	case e.SizeMiB == 0:
	case e.SizeMiB < r.size:
		h.log.Debug().Int("slot", slot).Uint64("reply_mib", e.SizeMiB).Uint64("asked_mib", r.size).Msg("stale reply ignored")
		return false
	default:
		res = result{granted: e.SizeMiB}
	}
	h.stats.replies.Add(1)
	delete(h.byMsg, r.msg)
	for _, w := range r.waiters {
		w <- res
	}
	return true
}

func (h *Host) readOutbox() error {
	h.stats.polls.Add(1)
	if err := h.out.ReadAt(h.rbuf, blockOffset(h.id)); err != nil {
		return err
	}
	h.outbox = Mailbox(h.rbuf)
	return nil
}

// send writes the mailbox, then the events block, and wakes a co-located SPM.
func (h *Host) send(now time.Time) {
	if err := h.write(); err != nil {
		h.stats.ioErrors.Add(1)
		wait := h.sendWait.Next()
		h.retryAt = now.Add(wait)
		h.log.Error().Err(err).Dur("retry_in", wait).Msg("cannot write the mailbox")
		return
	}
	h.sendWait.Reset()
	h.dirty = false
	h.lastSend = now
}

func (h *Host) write() error {
	h.mbox.Seal()
	copy(h.wbuf, h.mbox[:])
	if err := h.in.WriteAt(h.wbuf, blockOffset(h.id)); err != nil {
		return err
	}
	h.stats.writes.Add(1)
	if s := h.spm.Load(); s != nil {
		s.Wake(h.id)
	}
	var id EventID
	for i := range 2 {
		v := rand.Uint64()
		for j := range 8 {
			id[8*i+j] = byte(v >> (8 * j))
		}
	}
	id[6] = id[6]&0x0f | 0x40 // a version 4 UUID, as vdsm writes
	id[8] = id[8]&0x3f | 0x80
	event := EncodeEvent(id)
	copy(h.wbuf, event[:])
	// A lost event only delays the SPM until its next full scan.
	if err := h.in.WriteAt(h.wbuf, 0); err != nil {
		h.log.Warn().Err(err).Msg("cannot write the events block")
	}
	return nil
}

// shutdown clears the mailbox (best effort) and fails whoever still waits.
func (h *Host) shutdown() {
	h.mbox = Mailbox{}
	if err := h.write(); err != nil {
		h.log.Warn().Err(err).Msg("cannot clear the mailbox on close")
	}
	h.failAll(ErrClosed)
	h.log.Info().Msg("mailbox host stopped")
}

func (h *Host) failQueued(err error) {
	for _, r := range h.queue {
		delete(h.byMsg, r.msg)
		for _, w := range r.waiters {
			w <- result{err: err}
		}
	}
	h.queue = nil
}

func (h *Host) failAll(err error) {
	h.failQueued(err)
	for i := range h.slots {
		if r := h.slots[i].req; r != nil && h.slots[i].state == slotRequested {
			for _, w := range r.waiters {
				w <- result{err: err}
			}
			r.waiters = nil
		}
	}
	h.mu.Lock()
	calls := h.calls
	h.calls = nil
	h.mu.Unlock()
	for _, c := range calls {
		c.res <- result{err: err}
	}
}
