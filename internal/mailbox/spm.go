package mailbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/rs/zerolog"
)

// Request is an extend request the SPM found in a host's mailbox.
type Request struct {
	HostID int
	Slot   int
	Extend
}

// Handler serves extend requests. The SPM calls HandleExtend from its loop, once for
// each new request, and does not wait for the answer: the handler must return at once
// and answer through reply, then or later, from any goroutine. ctx is cancelled when
// the request is withdrawn (its slot changed: the host restarted or gave up) or the SPM
// stops; an answer after that is dropped. A request the handler keeps unanswered stays
// pending across rescans; an SPM that restarts is handed every request again, so
// extending must be idempotent ("extend to N").
type Handler interface {
	HandleExtend(ctx context.Context, req Request, reply *Reply)
}

// HandlerFunc adapts a synchronous function to Handler, running each call in its own
// goroutine: an error, or a size Grant refuses, answers failure; otherwise the size
// returned is granted.
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

// Grant answers success: the volume now has sizeMiB, at least the size asked for.
func (r *Reply) Grant(sizeMiB uint64) error {
	if sizeMiB < r.req.SizeMiB || sizeMiB > MaxSizeMiB {
		return fmt.Errorf("grant %d MiB for a request of %d MiB: out of range %d..%d", sizeMiB, r.req.SizeMiB, r.req.SizeMiB, uint64(MaxSizeMiB))
	}
	return r.answer(sizeMiB, nil)
}

// Fail answers failure (a reply of size 0); reason is logged.
func (r *Reply) Fail(reason error) error { return r.answer(0, reason) }

func (r *Reply) answer(sizeMiB uint64, reason error) error {
	if err := r.ctx.Err(); err != nil {
		return fmt.Errorf("%w: %w", ErrWithdrawn, context.Cause(r.ctx))
	}
	if r.answered.Swap(true) {
		return ErrAnswered
	}
	r.spm.enqueueAnswer(answer{host: r.req.HostID, slot: r.req.Slot, gen: r.gen, msg: replyFor(r.msg, sizeMiB), reason: reason})
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
	// ScanInterval is the period of full scans, which find hosts that write no events.
	ScanInterval time.Duration
}

// Defaults of SPMConfig.
const (
	DefaultEventPollMin = time.Millisecond
	DefaultEventPollMax = 100 * time.Millisecond
	DefaultScanInterval = 2 * time.Second
	spmPollRatio        = 50
)

// SPMStats counts the SPM's work since it started.
type SPMStats struct {
	EventReads   uint64 // 4 KiB reads of the events block
	FullScans    uint64 // 250 × 4 KiB reads
	HostReads    uint64 // 4 KiB reads of one host's mailbox (co-located wake-ups, rechecks)
	Writes       uint64 // outbox writes
	IOErrors     uint64
	BadChecksums uint64 // mailboxes skipped as torn or corrupt
	Requests     uint64 // requests handed to the handler
	Replies      uint64 // replies written
	Withdrawn    uint64 // requests whose slot changed before they were answered
}

type spmCounters struct {
	eventReads, fullScans, hostReads, writes, ioErrors, badChecksums, requests, replies, withdrawn atomic.Uint64
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
	scanBuf    []byte                // aligned, UsedSize
	hostBuf    []byte                // aligned, BlockSize
	pending    [NumMailboxes][MessagesPerMbox]*pendingRequest
	gen        uint64
	dirty      hostSet
	badSig     [NumMailboxes]uint64 // the last torn/corrupt content seen, to log and recheck it once
	recheck    hostSet
	lastEvent  [20]byte
	lastActive time.Time
	writeRetry backoff
	readRetry  backoff
	readPause  time.Time // no polls or scans before this, after a read failed
}

type pendingRequest struct {
	gen    uint64
	cancel context.CancelCauseFunc
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
	in, out, err := openVolumes(cfg.Inbox, cfg.Outbox)
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
	h.setWakeSPM(s.Wake)
}

// Stats returns the SPM's counters.
func (s *SPM) Stats() SPMStats {
	c := &s.stats
	return SPMStats{
		EventReads: c.eventReads.Load(), FullScans: c.fullScans.Load(), HostReads: c.hostReads.Load(),
		Writes: c.writes.Load(), IOErrors: c.ioErrors.Load(), BadChecksums: c.badChecksums.Load(),
		Requests: c.requests.Load(), Replies: c.replies.Load(), Withdrawn: c.withdrawn.Load(),
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
			lastPoll, nextScan = now, now.Add(s.cfg.ScanInterval)
		case !now.Before(nextEvent):
			if s.eventChanged() {
				s.lastActive = now
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
		wait := b.next()
		s.log.Error().Err(err).Dur("retry_in", wait).Msg("cannot " + what)
		select {
		case <-s.ctx.Done():
			return false
		case <-time.After(wait):
		}
	}
}

// read fills buf from the inbox. After a failure, polls and scans pause for a backoff
// that grows while the failures last.
func (s *SPM) read(buf []byte, off int64, what string) bool {
	if err := s.in.ReadAt(buf, off); err != nil {
		s.stats.ioErrors.Add(1)
		wait := s.readRetry.next()
		s.readPause = time.Now().Add(wait)
		s.log.Warn().Err(err).Dur("retry_in", wait).Msg("cannot read " + what)
		return false
	}
	s.readRetry.reset()
	return true
}

func (s *SPM) eventChanged() bool {
	s.stats.eventReads.Add(1)
	return s.read(s.hostBuf, 0, "the events block") && s.noteEvent(s.hostBuf)
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
	if !s.read(s.scanBuf, 0, "the mailboxes") {
		return
	}
	if s.noteEvent(s.scanBuf) {
		s.lastActive = now
	}
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
		if !s.read(s.hostBuf, blockOffset(id), "a host's mailbox") {
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
			// Log and recheck each new bad content once: a torn read is soon whole, while a
			// corrupt mailbox is only looked at again by the regular scans.
			s.badSig[id] = sig
			s.recheck.add(id)
			s.log.Warn().Int("host", id).Uint32("stored", mb.StoredChecksum()).Uint32("computed", mb.Checksum()).
				Msg("mailbox checksum mismatch (torn or corrupt); skipped, looking again")
		}
		return
	}
	s.badSig[id] = 0
	s.lastActive = now
	for slot := range MessagesPerMbox {
		if m := mb.Slot(slot); m != view.Slot(slot) {
			s.slotChanged(id, slot, m)
		}
	}
	*view = *mb
}

func (s *SPM) slotChanged(id, slot int, m Message) {
	if p := s.pending[id][slot]; p != nil {
		p.cancel(ErrWithdrawn)
		s.pending[id][slot] = nil
		s.stats.withdrawn.Add(1)
		s.log.Debug().Int("host", id).Int("slot", slot).Msg("request withdrawn before its reply")
	}
	log := s.log.With().Int("host", id).Int("slot", slot).Logger()
	switch m.Kind() {
	case KindEmpty:
	case KindClean:
		if s.outSlot(id, slot) != CleanMessage {
			s.setOutSlot(id, slot, CleanMessage)
		}
	case KindExtend:
		ext, err := DecodeExtend(m)
		if errors.Is(err, errMalformedSize) {
			log.Warn().Err(err).Msg("malformed extend request; answering failure")
			s.setOutSlot(id, slot, replyFor(m, 0))
			return
		}
		s.dispatch(Request{HostID: id, Slot: slot, Extend: ext}, m, log)
	default:
		log.Warn().Hex("message", m[:]).Msg("unknown message type; not answered")
	}
}

func (s *SPM) dispatch(req Request, m Message, log zerolog.Logger) {
	s.gen++
	ctx, cancel := context.WithCancelCause(s.ctx)
	s.pending[req.HostID][req.Slot] = &pendingRequest{gen: s.gen, cancel: cancel}
	s.stats.requests.Add(1)
	log.Debug().Stringer("domain", req.Domain).Stringer("volume", req.Volume).Uint64("size_mib", req.SizeMiB).Msg("extend request")
	reply := &Reply{spm: s, ctx: ctx, req: req, msg: m, gen: s.gen}
	defer func() {
		if r := recover(); r != nil {
			log.Error().Interface("panic", r).Msg("extend handler panicked; answering failure")
			reply.Fail(fmt.Errorf("handler panic: %v", r))
		}
	}()
	s.cfg.Handler.HandleExtend(ctx, req, reply)
}

// applyAnswers puts the handler's answers into the outbox; it reports whether there were any.
func (s *SPM) applyAnswers() bool {
	s.mu.Lock()
	answers := s.answers
	s.answers = nil
	s.mu.Unlock()
	for _, a := range answers {
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
	return len(answers) > 0
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
			wait := s.writeRetry.next()
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
	s.writeRetry.reset()
	*retryAt = time.Time{}
}

func (s *SPM) cancelPending() {
	for id := range s.pending {
		for slot, p := range s.pending[id] {
			if p != nil {
				p.cancel(errSPMClosed)
				s.pending[id][slot] = nil
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
