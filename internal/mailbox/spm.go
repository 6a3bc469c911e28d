package mailbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/backoff"
)

// Request is an extend request the SPM found in a host's mailbox.
type Request struct {
	HostID int
	Slot   int
	Extend
}

// Handler serves extend requests. The SPM calls HandleExtend from its loop, once for
// each new request, and does not wait for the answer: the handler must return at once
// and answer through reply, then or later, from any goroutine.
//
// Each request handed over must be answered exactly once, Grant or Fail, even after ctx
// has ended (the answer is then dropped and returns ErrWithdrawn): until its answer a
// request holds one of the SPM's MaxHandling places, and new requests wait for a place.
//
// ctx ends when the request is withdrawn (its slot changed: the host restarted or gave
// up) or the SPM stops. It may end waits (for free extents, for a lock), but must not
// bound an lvextend: a host losing interest must not get LVM killed mid-commit. Run LVM
// under a context of its own, such as context.WithoutCancel(ctx) with its own timeout.
//
// A request the handler keeps unanswered stays pending across rescans; an SPM that
// restarts is handed every request again, so extending must be idempotent ("extend to N").
type Handler interface {
	HandleExtend(ctx context.Context, req Request, reply *Reply)
}

// HandlerFunc adapts a synchronous function to Handler, running each call in its own
// goroutine (so at most MaxHandling of them at once): an error, or a size Grant refuses,
// answers failure; otherwise the size returned is granted. ctx is the Handler's, with
// its rule: it must not bound LVM commands.
type HandlerFunc func(ctx context.Context, req Request) (grantedMiB uint64, err error)

// HandleExtend implements Handler.
func (f HandlerFunc) HandleExtend(ctx context.Context, req Request, reply *Reply) {
	go func() {
		size, err := f(ctx, req)
		if err == nil {
			// A size Grant refuses must still answer, or the host waits forever.
			if err = reply.Grant(size); err == nil {
				return
			}
		}
		reply.Fail(err)
	}()
}

// Errors of Reply.
var (
	ErrAnswered  = errors.New("request already answered")
	ErrWithdrawn = errors.New("request withdrawn")
)

// Reply answers one request. Its methods may be called from any goroutine, once.
type Reply struct {
	spm      *SPM
	ctx      context.Context
	req      Request
	msg      Message
	gen      uint64
	answered atomic.Bool
}

// Grant answers success: the volume now has sizeMiB, at least the size asked for. A
// size out of range is refused and answers nothing.
func (r *Reply) Grant(sizeMiB uint64) error {
	if sizeMiB < r.req.SizeMiB || sizeMiB > MaxSizeMiB {
		return fmt.Errorf("grant %d MiB for a request of %d MiB: out of range %d..%d", sizeMiB, r.req.SizeMiB, r.req.SizeMiB, uint64(MaxSizeMiB))
	}
	return r.answer(sizeMiB, nil)
}

// Fail answers failure (a reply of size 0); reason is logged.
func (r *Reply) Fail(reason error) error { return r.answer(0, reason) }

// answer hands the reply to the SPM loop, which writes it unless the request was
// withdrawn, and frees the request's handler place either way.
func (r *Reply) answer(sizeMiB uint64, reason error) error {
	if r.answered.Swap(true) {
		return ErrAnswered
	}
	// Looked at first: writing the answer ends the context too.
	withdrawn := r.ctx.Err() != nil
	r.spm.enqueueAnswer(answer{host: r.req.HostID, slot: r.req.Slot, gen: r.gen, msg: replyFor(r.msg, sizeMiB), reason: reason})
	if withdrawn {
		return fmt.Errorf("%w: %w", ErrWithdrawn, context.Cause(r.ctx))
	}
	return nil
}

type answer struct {
	host, slot int
	gen        uint64
	msg        Message
	reason     error
}

// SPMConfig configures an SPM. Zero or negative durations take the defaults.
type SPMConfig struct {
	Inbox, Outbox string // paths of the volumes (the SPM reads the inbox, writes the outbox)
	Handler       Handler
	Log           zerolog.Logger

	// The events block is read every EventPollMin right after activity; the interval then
	// grows with the quiet time (1/50 of it, so the added delay stays near 1% of the gap
	// between requests) up to EventPollMax, which sets the idle cost.
	EventPollMin, EventPollMax time.Duration
	// ScanInterval is the period of full scans, which find hosts that write no events and
	// write again the outbox mailboxes someone else overwrote.
	ScanInterval time.Duration

	// MaxHandling caps the requests handed to the Handler and not answered yet (so the
	// goroutines of a HandlerFunc); later ones wait, in the order they were found.
	MaxHandling int
	// IgnoreSignatures opens volumes that carry a known signature (VolumeOptions).
	IgnoreSignatures bool
}

// Defaults of SPMConfig.
const (
	DefaultEventPollMin = time.Millisecond
	DefaultEventPollMax = 100 * time.Millisecond
	DefaultScanInterval = 2 * time.Second
	DefaultMaxHandling  = 64 // LVM serialises a VG's changes anyway
	spmPollRatio        = 50
	// noticeEvery is how often a warning that repeats for one host (bad checksums, bad
	// messages, an overwritten outbox) is logged; the repeats in between are counted.
	noticeEvery = time.Minute
)

// SPMStats counts the SPM's work since it started.
type SPMStats struct {
	EventReads   uint64 // 4 KiB reads of the events block
	FullScans    uint64 // 250 × 4 KiB reads
	HostReads    uint64 // 4 KiB reads of one host's mailbox (co-located wake-ups, rechecks)
	Writes       uint64 // outbox writes
	IOErrors     uint64
	BadChecksums uint64 // mailboxes skipped as torn or corrupt
	BadMessages  uint64 // unknown opcodes and malformed requests
	Requests     uint64 // requests found (handed to the handler, or waiting for a place)
	Replies      uint64 // replies written
	Withdrawn    uint64 // requests whose slot changed before they were answered
	OutboxReads  uint64 // UsedSize reads of the outbox, one per periodic scan
	Reasserted   uint64 // outbox mailboxes found overwritten and written again
}

type spmCounters struct {
	eventReads, fullScans, hostReads, writes, ioErrors, badChecksums, badMessages, requests, replies,
	withdrawn, outboxReads, reasserted atomic.Uint64
}

// SPM is the Storage Pool Manager's side of the mailbox: it finds requests in the inbox,
// hands them to its Handler and writes the replies into the outbox.
type SPM struct {
	cfg    SPMConfig
	log    zerolog.Logger
	in     *Volume
	out    *Volume
	pace   pacer
	cancel context.CancelFunc
	done   chan struct{}
	stats  spmCounters

	closeOnce sync.Once
	closeErr  error

	alarm    *alarm // the loop sleeps on it; answers and co-located hosts wake it
	mu       sync.Mutex
	answers  []answer
	wakeMask hostSet
	local    map[int]*Host

	// Owned by the loop.
	ctx        context.Context
	view       [NumMailboxes]Mailbox // inbox as last read and found valid
	outbox     []byte                // the outbox as written (aligned, UsedSize)
	scanBuf    []byte                // aligned, UsedSize: the inbox, then the outbox as read
	hostBuf    []byte                // aligned, BlockSize
	pending    [NumMailboxes][MessagesPerMbox]*pendingRequest
	waiting    []*pendingRequest // found while every handler place was taken, oldest first
	handling   int               // requests handed to the handler and not answered yet
	gen        uint64
	dirty      hostSet
	badSig     [NumMailboxes]uint64 // the last torn/corrupt content seen, to recheck it once
	recheck    hostSet
	notices    [NumMailboxes][noticeKinds]notice
	lastEvent  [20]byte
	lastActive time.Time
	writeRetry backoff.Backoff
	readRetry  backoff.Backoff
	readPause  time.Time // no polls or scans before this, after a read failed
}

// pendingRequest is a request found and not answered: waiting for a handler place
// (cancel is nil), or with the handler.
type pendingRequest struct {
	gen    uint64
	req    Request
	msg    Message
	cancel context.CancelCauseFunc
}

// The warnings logged at most once per noticeEvery and host.
const (
	noticeChecksum = iota
	noticeMessage
	noticeOutbox
	noticeKinds
)

// notice rate-limits one repeated warning.
type notice struct {
	next    time.Time
	repeats int
}

// due reports whether the warning is to be logged at now, and how many times it was
// held back since the last one.
func (n *notice) due(now time.Time) (bool, int) {
	if now.Before(n.next) {
		n.repeats++
		return false, 0
	}
	held := n.repeats
	n.next, n.repeats = now.Add(noticeEvery), 0
	return true, held
}

// warn logs a warning about host id, at most once per noticeEvery for each kind.
func (s *SPM) warn(id, kind int, now time.Time) *zerolog.Event {
	due, held := s.notices[id][kind].due(now)
	if !due {
		return nil // a nil event logs nothing
	}
	return s.log.Warn().Int("host", id).Int("held_back", held)
}

var errSPMClosed = errors.New("SPM closed")

// hostSet is a set of mailbox numbers 0..255.
type hostSet [4]uint64

func (s *hostSet) add(id int)            { s[id/64] |= 1 << (id % 64) }
func (s *hostSet) has(id int) bool       { return s[id/64]&(1<<(id%64)) != 0 }
func (s *hostSet) empty() bool           { return *s == hostSet{} }
func (s *hostSet) remove(id int)         { s[id/64] &^= 1 << (id % 64) }
func (s *hostSet) take() (taken hostSet) { taken, *s = *s, hostSet{}; return taken }

// OpenSPM opens the volumes and starts the SPM loop, which first zeroes the outbox
// (the replies of an earlier SPM are void: it handles every pending request again).
func OpenSPM(cfg SPMConfig) (*SPM, error) {
	if cfg.Handler == nil {
		return nil, errors.New("spm: no handler")
	}
	cfg.EventPollMin = orDefault(cfg.EventPollMin, DefaultEventPollMin)
	cfg.EventPollMax = max(orDefault(cfg.EventPollMax, DefaultEventPollMax), cfg.EventPollMin)
	cfg.ScanInterval = orDefault(cfg.ScanInterval, DefaultScanInterval)
	if cfg.MaxHandling <= 0 {
		cfg.MaxHandling = DefaultMaxHandling
	}
	in, out, err := openVolumes(cfg.Inbox, cfg.Outbox, VolumeOptions{IgnoreSignatures: cfg.IgnoreSignatures})
	if err != nil {
		return nil, fmt.Errorf("spm: %w", err)
	}
	alarm, err := newAlarm()
	if err != nil {
		in.Close()
		out.Close()
		return nil, fmt.Errorf("spm: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &SPM{
		cfg:        cfg,
		log:        cfg.Log.With().Str("mailbox", "spm").Logger(),
		in:         in,
		out:        out,
		pace:       pacer{min: cfg.EventPollMin, max: cfg.EventPollMax, ratio: spmPollRatio},
		cancel:     cancel,
		done:       make(chan struct{}),
		alarm:      alarm,
		local:      map[int]*Host{},
		ctx:        ctx,
		outbox:     AlignedBuffer(UsedSize),
		scanBuf:    AlignedBuffer(UsedSize),
		hostBuf:    AlignedBuffer(BlockSize),
		writeRetry: newBackoff(),
		readRetry:  newBackoff(),
	}
	go s.run()
	return s, nil
}

// orDefault returns v, or def when v is not positive (a negative interval would poll
// without pause).
func orDefault(v, def time.Duration) time.Duration {
	if v <= 0 {
		return def
	}
	return v
}

// Close stops the SPM: pending requests are cancelled (their contexts end) and unanswered.
func (s *SPM) Close() error {
	s.cancel()
	s.alarm.wake()
	<-s.done
	s.closeOnce.Do(func() { s.closeErr = errors.Join(s.in.Close(), s.out.Close(), s.alarm.close()) })
	return s.closeErr
}

// Wake makes the SPM read host id's mailbox now: a co-located host calls it after
// writing, so that its request needs no poll.
func (s *SPM) Wake(hostID int) {
	if ValidHostID(hostID) != nil {
		return
	}
	s.mu.Lock()
	s.wakeMask.add(hostID)
	s.mu.Unlock()
	s.alarm.wake()
}

// AddLocal links a Host in the same process: it wakes the SPM when it writes, and the
// SPM wakes it when it writes its replies. The bytes still go through the volumes.
func (s *SPM) AddLocal(h *Host) {
	s.mu.Lock()
	s.local[h.id] = h
	s.mu.Unlock()
	h.spm.Store(s)
}

// RemoveLocal undoes AddLocal, for when the SPM role leaves this process and its host
// goes on: h polls on its own again and this SPM forgets it. A link h has made to
// another SPM since is left alone.
func (s *SPM) RemoveLocal(h *Host) {
	s.mu.Lock()
	if s.local[h.id] == h {
		delete(s.local, h.id)
	}
	s.mu.Unlock()
	h.spm.CompareAndSwap(s, nil)
}

// Stats returns the SPM's counters.
func (s *SPM) Stats() SPMStats {
	c := &s.stats
	return SPMStats{
		EventReads: c.eventReads.Load(), FullScans: c.fullScans.Load(), HostReads: c.hostReads.Load(),
		Writes: c.writes.Load(), IOErrors: c.ioErrors.Load(), BadChecksums: c.badChecksums.Load(),
		BadMessages: c.badMessages.Load(), Requests: c.requests.Load(), Replies: c.replies.Load(),
		Withdrawn: c.withdrawn.Load(), OutboxReads: c.outboxReads.Load(), Reasserted: c.reasserted.Load(),
	}
}

func (s *SPM) enqueueAnswer(a answer) {
	s.mu.Lock()
	s.answers = append(s.answers, a)
	s.mu.Unlock()
	s.alarm.wake()
}

func (s *SPM) run() {
	defer close(s.done)
	defer s.cancelPending()
	if !s.retry("zero the outbox", func() error { return s.out.WriteAt(s.outbox, 0) }) {
		return
	}
	s.stats.writes.Add(1)
	s.log.Info().Str("inbox", s.in.Path()).Str("outbox", s.out.Path()).Msg("SPM mailbox started")

	now := time.Now()
	s.lastActive = now
	s.fullScan(now)
	lastPoll, nextScan := now, now.Add(s.cfg.ScanInterval)
	var retryWrites, recheckAt time.Time
	for {
		s.flush(&retryWrites)
		if recheckAt.IsZero() && !s.recheck.empty() {
			recheckAt = time.Now().Add(s.pace.min)
		}
		// Activity since the last poll brings the next one forward to pace.min.
		nextEvent := lastPoll.Add(s.pace.interval(lastPoll.Sub(s.lastActive)))
		nextEvent, nextScan = notBefore(nextEvent, s.readPause), notBefore(nextScan, s.readPause)
		if !recheckAt.IsZero() {
			recheckAt = notBefore(recheckAt, s.readPause)
		}
		woken := s.alarm.wait(time.Until(earliest(nextScan, nextEvent, retryWrites, recheckAt)))
		if s.ctx.Err() != nil {
			return
		}
		now = time.Now()
		if woken {
			if s.applyAnswers() {
				s.lastActive = now
			}
			s.mu.Lock()
			woke := s.wakeMask.take()
			s.mu.Unlock()
			if !woke.empty() {
				s.lastActive = now
				s.readHosts(woke, now)
			}
		}
		switch {
		case !now.Before(nextScan):
			s.fullScan(now)
			s.reassert(now)
			lastPoll, nextScan = now, now.Add(s.cfg.ScanInterval)
		case !now.Before(nextEvent):
			// Only a mailbox that changed counts as activity (examine): a host that writes
			// the events block alone, in a loop, gets the idle pace, not a scan a millisecond.
			if s.eventChanged() {
				s.fullScan(now)
			}
			lastPoll = now
		}
		if !recheckAt.IsZero() && !now.Before(recheckAt) {
			recheckAt = time.Time{}
			s.readHosts(s.recheck.take(), now)
		}
	}
}

// notBefore returns t, or pause if that is later.
func notBefore(t, pause time.Time) time.Time {
	if pause.After(t) {
		return pause
	}
	return t
}

// earliest returns the earliest non-zero time.
func earliest(times ...time.Time) time.Time {
	var first time.Time
	for _, t := range times {
		if !t.IsZero() && (first.IsZero() || t.Before(first)) {
			first = t
		}
	}
	return first
}

// retry runs op until it succeeds, logging failures and backing off; false if the SPM stopped.
func (s *SPM) retry(what string, op func() error) bool {
	b := newBackoff()
	for {
		err := op()
		if err == nil {
			return true
		}
		s.stats.ioErrors.Add(1)
		wait := b.Next()
		s.log.Error().Err(err).Dur("retry_in", wait).Msg("cannot " + what)
		select {
		case <-s.ctx.Done():
			return false
		case <-time.After(wait):
		}
	}
}

// read fills buf from v. After a failure, polls and scans pause for a backoff that
// grows while the failures last.
func (s *SPM) read(v *Volume, buf []byte, off int64, what string) bool {
	if err := v.ReadAt(buf, off); err != nil {
		s.stats.ioErrors.Add(1)
		wait := s.readRetry.Next()
		s.readPause = time.Now().Add(wait)
		s.log.Warn().Err(err).Dur("retry_in", wait).Msg("cannot read " + what)
		return false
	}
	s.readRetry.Reset()
	return true
}

func (s *SPM) eventChanged() bool {
	s.stats.eventReads.Add(1)
	return s.read(s.in, s.hostBuf, 0, "the events block") && s.noteEvent(s.hostBuf)
}

// noteEvent records the events block's first 20 bytes and reports whether they changed.
func (s *SPM) noteEvent(block []byte) bool {
	if bytes.Equal(block[:20], s.lastEvent[:]) {
		return false
	}
	copy(s.lastEvent[:], block)
	return true
}

func (s *SPM) fullScan(now time.Time) {
	s.stats.fullScans.Add(1)
	if !s.read(s.in, s.scanBuf, 0, "the mailboxes") {
		return
	}
	s.noteEvent(s.scanBuf)
	for id := MinHostID; id <= MaxHostID; id++ {
		s.examine(id, (*Mailbox)(s.scanBuf[blockOffset(id):]), now)
	}
}

// readHosts reads and examines the given mailboxes, or all of them when that is cheaper.
func (s *SPM) readHosts(ids hostSet, now time.Time) {
	n := 0
	for id := MinHostID; id <= MaxHostID; id++ {
		if ids.has(id) {
			n++
		}
	}
	if n > 8 {
		s.fullScan(now)
		return
	}
	for id := MinHostID; id <= MaxHostID; id++ {
		if !ids.has(id) {
			continue
		}
		s.stats.hostReads.Add(1)
		if !s.read(s.in, s.hostBuf, blockOffset(id), "a host's mailbox") {
			continue
		}
		s.examine(id, (*Mailbox)(s.hostBuf), now)
	}
}

// examine acts on what changed in host id's mailbox since its last valid read.
func (s *SPM) examine(id int, mb *Mailbox, now time.Time) {
	view := &s.view[id]
	if *mb == *view {
		return
	}
	if !mb.Valid() {
		sig := uint64(mb.StoredChecksum())<<32 | uint64(mb.Checksum())
		s.stats.badChecksums.Add(1)
		if s.badSig[id] != sig {
			// Recheck each new bad content once: a torn read is soon whole, while a
			// corrupt mailbox is only looked at again by the regular scans.
			s.badSig[id] = sig
			s.recheck.add(id)
			s.warn(id, noticeChecksum, now).Uint32("stored", mb.StoredChecksum()).Uint32("computed", mb.Checksum()).
				Msg("mailbox checksum mismatch (torn or corrupt); skipped, looking again")
		}
		return
	}
	s.badSig[id] = 0
	s.lastActive = now
	for slot := range MessagesPerMbox {
		if m := mb.Slot(slot); m != view.Slot(slot) {
			s.slotChanged(id, slot, m, now)
		}
	}
	*view = *mb
}

func (s *SPM) slotChanged(id, slot int, m Message, now time.Time) {
	if p := s.pending[id][slot]; p != nil {
		s.withdraw(p, ErrWithdrawn)
		s.stats.withdrawn.Add(1)
		s.log.Debug().Int("host", id).Int("slot", slot).Msg("request withdrawn before its reply")
	}
	switch m.Kind() {
	case KindEmpty:
	case KindClean:
		if s.outSlot(id, slot) != CleanMessage {
			s.setOutSlot(id, slot, CleanMessage)
		}
	case KindExtend:
		ext, err := DecodeExtend(m)
		if errors.Is(err, errMalformedSize) {
			s.stats.badMessages.Add(1)
			s.warn(id, noticeMessage, now).Int("slot", slot).Err(err).Msg("malformed extend request; answering failure")
			s.setOutSlot(id, slot, replyFor(m, 0))
			return
		}
		s.dispatch(Request{HostID: id, Slot: slot, Extend: ext}, m)
	default:
		s.stats.badMessages.Add(1)
		s.warn(id, noticeMessage, now).Int("slot", slot).Hex("message", m[:]).Msg("unknown message type; not answered")
	}
}

// withdraw forgets a pending request: its handler's context ends with cause, or it
// leaves the queue of those waiting for a place.
func (s *SPM) withdraw(p *pendingRequest, cause error) {
	s.pending[p.req.HostID][p.req.Slot] = nil
	if p.cancel != nil {
		p.cancel(cause)
		return
	}
	s.waiting = slices.DeleteFunc(s.waiting, func(w *pendingRequest) bool { return w == p })
}

func (s *SPM) dispatch(req Request, m Message) {
	s.gen++
	p := &pendingRequest{gen: s.gen, req: req, msg: m}
	s.pending[req.HostID][req.Slot] = p
	s.stats.requests.Add(1)
	s.log.Debug().Int("host", req.HostID).Int("slot", req.Slot).Stringer("domain", req.Domain).Stringer("volume", req.Volume).
		Uint64("size_mib", req.SizeMiB).Int("waiting", len(s.waiting)).Msg("extend request")
	if s.handling < s.cfg.MaxHandling {
		s.hand(p)
	} else {
		s.waiting = append(s.waiting, p)
	}
}

// hand gives p to the handler; it holds a handler place until its answer.
func (s *SPM) hand(p *pendingRequest) {
	s.handling++
	ctx, cancel := context.WithCancelCause(s.ctx)
	p.cancel = cancel
	reply := &Reply{spm: s, ctx: ctx, req: p.req, msg: p.msg, gen: p.gen}
	defer func() {
		if r := recover(); r != nil {
			s.log.Error().Int("host", p.req.HostID).Int("slot", p.req.Slot).Interface("panic", r).Msg("extend handler panicked; answering failure")
			reply.Fail(fmt.Errorf("handler panic: %v", r))
		}
	}()
	s.cfg.Handler.HandleExtend(ctx, p.req, reply)
}

// applyAnswers puts the handler's answers into the outbox; it reports whether there were any.
func (s *SPM) applyAnswers() bool {
	s.mu.Lock()
	answers := s.answers
	s.answers = nil
	s.mu.Unlock()
	for _, a := range answers {
		s.handling--
		p := s.pending[a.host][a.slot]
		if p == nil || p.gen != a.gen {
			continue // withdrawn in the meantime
		}
		p.cancel(nil)
		s.pending[a.host][a.slot] = nil
		s.setOutSlot(a.host, a.slot, a.msg)
		s.stats.replies.Add(1)
		if a.reason != nil {
			s.log.Warn().Err(a.reason).Int("host", a.host).Int("slot", a.slot).Msg("extend failed; replying failure")
		}
	}
	for s.handling < s.cfg.MaxHandling && len(s.waiting) > 0 {
		p := s.waiting[0]
		s.waiting = s.waiting[1:]
		s.hand(p)
	}
	return len(answers) > 0
}

// reassert reads the outbox and writes again the mailboxes that differ from what this
// SPM wrote: someone overwrote them (an operator's mailbox init, an old SPM's last
// write), and a host waiting there for its reply or CLEAN echo never asks again.
func (s *SPM) reassert(now time.Time) {
	s.stats.outboxReads.Add(1)
	if !s.read(s.out, s.scanBuf, 0, "the outbox") {
		return
	}
	for id := MinHostID; id <= MaxHostID; id++ {
		off := blockOffset(id)
		ours := s.outbox[off : off+BlockSize]
		// A mailbox this SPM has nothing in is left to whoever wrote it: a new SPM
		// that took over, while this one has yet to learn it lost the role.
		if s.dirty.has(id) || bytes.Equal(s.scanBuf[off:off+BlockSize], ours) || !slices.ContainsFunc(ours, func(b byte) bool { return b != 0 }) {
			continue
		}
		s.dirty.add(id)
		s.stats.reasserted.Add(1)
		s.warn(id, noticeOutbox, now).Msg("outbox mailbox overwritten by another writer; writing it again")
	}
}

func (s *SPM) outSlot(id, slot int) Message {
	return (*Mailbox)(s.outbox[blockOffset(id):]).Slot(slot)
}

func (s *SPM) setOutSlot(id, slot int, m Message) {
	(*Mailbox)(s.outbox[blockOffset(id):]).SetSlot(slot, m)
	s.dirty.add(id)
}

// flush writes the changed outbox mailboxes, one 4 KiB write each. After a failure
// it waits until *retryAt, then tries again.
func (s *SPM) flush(retryAt *time.Time) {
	if s.dirty.empty() || time.Now().Before(*retryAt) {
		return
	}
	for id := MinHostID; id <= MaxHostID; id++ {
		if !s.dirty.has(id) {
			continue
		}
		off := blockOffset(id)
		if err := s.out.WriteAt(s.outbox[off:off+BlockSize], off); err != nil {
			s.stats.ioErrors.Add(1)
			wait := s.writeRetry.Next()
			*retryAt = time.Now().Add(wait)
			s.log.Error().Err(err).Int("host", id).Dur("retry_in", wait).Msg("cannot write replies")
			return
		}
		s.stats.writes.Add(1)
		s.dirty.remove(id)
		s.mu.Lock()
		h := s.local[id]
		s.mu.Unlock()
		if h != nil {
			h.Poke()
		}
	}
	s.writeRetry.Reset()
	*retryAt = time.Time{}
}

func (s *SPM) cancelPending() {
	for id := range s.pending {
		for _, p := range s.pending[id] {
			if p != nil {
				s.withdraw(p, errSPMClosed)
			}
		}
	}
}

// pacer spaces polls: min right after activity, then in proportion to the quiet time
// (quiet/ratio), at most max, so that idle costs little and a busy spell answers fast.
type pacer struct {
	min, max time.Duration
	ratio    time.Duration
}

func (p pacer) interval(quiet time.Duration) time.Duration {
	return min(max(quiet/p.ratio, p.min), p.max)
}
