// Package qmp is a small client of the QEMU Machine Protocol: enough for lvwatch to
// see that QEMU paused a VM on ENOSPC (a BLOCK_IO_ERROR event, status "io-error", a
// drive's io-status "nospace") and to resume it once the volume has grown.
//
// A QEMU monitor socket serves one client at a time, and the management stack
// (Proxmox's qm, for one) uses the same socket: while lvwatch holds it, nobody else
// can ask the VM anything. So a caller dials, asks, acts and closes quickly, and
// nothing here waits without a bound: every call takes a context, and a peer that
// stops answering costs the caller its context, never a hang.
//
// Every byte from the socket is untrusted: a message is at most MaxMessage bytes, and
// anything that is not a QMP greeting, reply or event ends the connection with an
// error that every waiting and later call returns.
package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// MaxMessage bounds one message from the peer, so that a hostile or broken peer cannot
// make the client allocate without limit. QEMU's largest replies here, query-block and
// query-blockstats with long backing chains on many drives, stay far below it.
const MaxMessage = 16 << 20

// EventBuffer is how many events a Conn holds for a caller that does not read
// Events. Past that the oldest are dropped (and counted): the reader goroutine must
// never block, or replies would stop too. A caller that lost events learns the VM's
// state from QueryStatus and QueryBlock, which is what an event only hints at anyway.
const EventBuffer = 256

// ErrClosed is the cause of a call's error after Close.
var ErrClosed = errors.New("connection closed")

// Conn is one QMP session. It is safe for concurrent use: replies are matched to
// their commands by id.
type Conn struct {
	conn    net.Conn
	dec     *decoder
	version Version

	wmu sync.Mutex // one command on the wire at a time

	mu      sync.Mutex
	nextID  uint64
	pending map[uint64]chan reply
	err     error         // why the connection ended; written before done is closed
	done    chan struct{} // closed when the connection ends
	once    sync.Once

	events     chan Event
	dropped    atomic.Uint64
	readerDone chan struct{}
}

// Version is QEMU's version from the greeting, for logs and for working around
// what differs between releases.
type Version struct {
	Major, Minor, Micro int
	Package             string // the distribution's build, e.g. "Debian 1:7.2+dfsg-7"
}

func (v Version) String() string {
	s := fmt.Sprintf("%d.%d.%d", v.Major, v.Minor, v.Micro)
	if v.Package != "" {
		s += " (" + v.Package + ")"
	}
	return s
}

// Dial connects to the QMP unix socket at path, reads the greeting and runs
// qmp_capabilities. ctx bounds all of it: while another client holds the socket,
// QEMU does not greet a second one, and Dial returns ctx's error (the stage it
// waited in, "greeting", says so).
func Dial(ctx context.Context, path string) (*Conn, error) {
	var d net.Dialer
	nc, err := d.DialContext(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("qmp: dial %s: %w", path, err)
	}
	c, err := handshake(ctx, nc)
	if err != nil {
		nc.Close()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			<-ctx.Done() // the socket's deadline was ctx's: its timer may lag a moment behind
		}
		if ctx.Err() != nil {
			err = fmt.Errorf("%w (%v)", ctx.Err(), err)
		}
		return nil, fmt.Errorf("qmp: dial %s: %w", path, err)
	}
	return c, nil
}

// handshake runs the greeting and capability negotiation on nc before the reader
// goroutine starts, under ctx's deadline and cancellation.
func handshake(ctx context.Context, nc net.Conn) (*Conn, error) {
	c := &Conn{
		conn:       nc,
		dec:        newDecoder(nc, MaxMessage),
		pending:    make(map[uint64]chan reply),
		done:       make(chan struct{}),
		events:     make(chan Event, EventBuffer),
		readerDone: make(chan struct{}),
	}
	dl, _ := ctx.Deadline()
	if err := nc.SetDeadline(dl); err != nil {
		return nil, err
	}
	stop := interruptOn(ctx, nc.SetDeadline)
	defer stop()

	m, err := c.dec.next()
	if err != nil {
		return nil, fmt.Errorf("greeting: %w", err)
	}
	if m.kind != kindGreeting {
		return nil, errors.New("greeting: the peer's first message is not a QMP greeting")
	}
	c.version = m.version
	req, err := encodeCommand("qmp_capabilities", 0, nil)
	if err != nil {
		return nil, err
	}
	if _, err := nc.Write(req); err != nil {
		return nil, fmt.Errorf("qmp_capabilities: write: %w", err)
	}
	for m.kind != kindReply { // QEMU sends no events before this reply; accept them anyway
		if m, err = c.dec.next(); err != nil {
			return nil, fmt.Errorf("qmp_capabilities: %w", err)
		}
		switch m.kind {
		case kindEvent:
			c.deliver(m.event)
		case kindGreeting:
			return nil, fmt.Errorf("qmp_capabilities: %w", errSecondGreeting)
		}
	}
	if m.reply.err != nil {
		return nil, fmt.Errorf("qmp_capabilities: %w", m.reply.err)
	}
	stop()
	if err := nc.SetDeadline(time.Time{}); err != nil {
		return nil, err
	}
	go c.read()
	return c, nil
}

// interruptOn makes ctx's end set a deadline in the past through set, which wakes a
// blocked read or write. stop returns only when set can no longer run, so that a
// deadline set after it is not overwritten; calls after the first do nothing.
func interruptOn(ctx context.Context, set func(time.Time) error) (stop func()) {
	fired := make(chan struct{})
	stopf := context.AfterFunc(ctx, func() {
		set(time.Unix(1, 0))
		close(fired)
	})
	var once sync.Once
	return func() {
		once.Do(func() {
			if !stopf() {
				<-fired
			}
		})
	}
}

// Version is the QEMU version the greeting named.
func (c *Conn) Version() Version { return c.version }

// Close ends the session and releases the socket for the next client. Calls still
// waiting return ErrClosed, and Events is closed. Close returns when the reader
// goroutine has ended; a second Close does nothing.
func (c *Conn) Close() error {
	err := c.shutdown(ErrClosed)
	<-c.readerDone
	return err
}

// shutdown ends the connection for the reason why, once; later reasons are ignored.
func (c *Conn) shutdown(why error) error {
	var err error
	c.once.Do(func() {
		c.mu.Lock()
		c.err = why
		close(c.done)
		c.mu.Unlock()
		err = c.conn.Close()
	})
	return err
}

// Events delivers the asynchronous events received on this connection, in order,
// until the connection ends (then it is closed). See EventBuffer for a slow reader.
func (c *Conn) Events() <-chan Event { return c.events }

// DroppedEvents counts the events dropped because Events was full.
func (c *Conn) DroppedEvents() uint64 { return c.dropped.Load() }

// Execute runs command with args (nil for none) and decodes the reply's return value
// into result (nil to discard it). A QMP error reply is returned as *Error. When ctx
// ends first, the command may still run in QEMU; its late reply is discarded.
func (c *Conn) Execute(ctx context.Context, command string, args, result any) error {
	r, err := c.call(ctx, command, args)
	if err != nil {
		return fmt.Errorf("qmp %s: %w", command, err)
	}
	if r.err != nil {
		return fmt.Errorf("qmp %s: %w", command, r.err)
	}
	if result != nil {
		if err := json.Unmarshal(r.ret, result); err != nil {
			return fmt.Errorf("qmp %s: decode reply: %w", command, err)
		}
	}
	return nil
}

// call sends one command and waits for the reply with its id.
func (c *Conn) call(ctx context.Context, command string, args any) (reply, error) {
	if err := ctx.Err(); err != nil {
		return reply{}, err
	}
	ch := make(chan reply, 1)
	c.mu.Lock()
	select {
	case <-c.done:
		c.mu.Unlock()
		return reply{}, c.err
	default:
	}
	c.nextID++
	id := c.nextID
	c.pending[id] = ch
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		delete(c.pending, id)
		c.mu.Unlock()
	}()

	req, err := encodeCommand(command, id, args)
	if err != nil {
		return reply{}, err
	}
	if err := c.send(ctx, req); err != nil {
		return reply{}, err
	}
	select {
	case r := <-ch:
		return r, nil
	case <-ctx.Done():
		return reply{}, ctx.Err()
	case <-c.done:
		select {
		case r := <-ch: // the reply came just before the end
			return r, nil
		default:
		}
		return reply{}, c.err
	}
}

// send writes one encoded command, bounded by ctx. A failed write ends the
// connection: a command cut in the middle would garble the stream for QEMU.
func (c *Conn) send(ctx context.Context, req []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	dl, _ := ctx.Deadline()
	if err := c.conn.SetWriteDeadline(dl); err != nil {
		c.shutdown(fmt.Errorf("write: %w", err))
		return c.err
	}
	stop := interruptOn(ctx, c.conn.SetWriteDeadline)
	_, err := c.conn.Write(req)
	stop()
	if err != nil {
		c.shutdown(fmt.Errorf("write: %w", err))
		if errors.Is(err, os.ErrDeadlineExceeded) {
			<-ctx.Done() // as in Dial
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return c.err
	}
	return nil
}

// read is the one goroutine that reads the socket: it routes replies to their
// callers and events to Events until the connection ends.
func (c *Conn) read() {
	defer close(c.readerDone)
	defer close(c.events)
	for {
		m, err := c.dec.next()
		if err != nil {
			c.shutdown(err)
			return
		}
		switch m.kind {
		case kindEvent:
			c.deliver(m.event)
		case kindReply:
			c.route(m)
		default:
			c.shutdown(errSecondGreeting)
			return
		}
	}
}

var errSecondGreeting = errors.New("unexpected second greeting")

// route hands a reply to the call waiting for its id. A reply nobody waits for (its
// caller gave up, or the id is not one of ours) is dropped. QEMU omits the id only
// when it could not parse the command; such a reply goes to the one pending call,
// if there is exactly one, and is dropped otherwise.
func (c *Conn) route(m message) {
	c.mu.Lock()
	var ch chan reply
	switch m.id {
	case idOurs:
		ch = c.pending[m.num]
		delete(c.pending, m.num)
	case idNone:
		if len(c.pending) == 1 {
			for id, p := range c.pending {
				ch = p
				delete(c.pending, id)
			}
		}
	}
	c.mu.Unlock()
	if ch != nil {
		ch <- m.reply // buffered, and removed from pending: this is its only send
	}
}

// deliver queues an event without ever blocking: when Events is full, the oldest
// event makes room and is counted as dropped.
func (c *Conn) deliver(e Event) {
	for {
		select {
		case c.events <- e:
			return
		default:
		}
		select {
		case <-c.events:
			c.dropped.Add(1)
		default:
		}
	}
}

// QueryStatus returns the VM's run state (query-status).
func (c *Conn) QueryStatus(ctx context.Context) (Status, error) {
	var s Status
	if err := c.Execute(ctx, "query-status", nil, &s); err != nil {
		return Status{}, err
	}
	return s, nil
}

// QueryBlock returns the VM's drives (query-block): which image each has open and
// whether its last I/O failed for lack of space.
func (c *Conn) QueryBlock(ctx context.Context) ([]Block, error) {
	var b []Block
	if err := c.Execute(ctx, "query-block", nil, &b); err != nil {
		return nil, err
	}
	return b, nil
}

// QueryBlockstats returns the I/O statistics of the VM's drives (query-blockstats
// with query-nodes false: one entry per drive, its protocol layer under Parent).
func (c *Conn) QueryBlockstats(ctx context.Context) ([]Blockstats, error) {
	var b []Blockstats
	if err := c.Execute(ctx, "query-blockstats", map[string]bool{"query-nodes": false}, &b); err != nil {
		return nil, err
	}
	return b, nil
}

// Cont resumes the VM (cont). QEMU retries the requests that failed with ENOSPC
// first; if the space is still missing, the VM stops again with a new BLOCK_IO_ERROR.
func (c *Conn) Cont(ctx context.Context) error {
	return c.Execute(ctx, "cont", nil, nil)
}
