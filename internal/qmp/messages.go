package qmp

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"time"
)

// Event names lvwatch acts on.
const (
	// EventBlockIOError: a drive's request failed; with werror=stop (or enospc) and
	// NoSpace, QEMU stopped the VM and keeps the request to retry on cont.
	EventBlockIOError = "BLOCK_IO_ERROR"
	EventStop         = "STOP"   // the VM stopped (an I/O error, a stop command, ...)
	EventResume       = "RESUME" // the VM runs again
)

// Run states of Status.Status that lvwatch tells apart (QEMU has more).
const (
	StatusRunning   = "running"
	StatusPaused    = "paused"    // a stop command
	StatusIOError   = "io-error"  // stopped on a drive's I/O error (werror=stop or enospc)
	StatusPrelaunch = "prelaunch" // started with -S, never run
)

// Block.IOStatus values.
const (
	IOStatusOK      = "ok"
	IOStatusFailed  = "failed"
	IOStatusNoSpace = "nospace" // the last request failed with ENOSPC: grow, then Cont
)

// BlockIOError.Action values: what QEMU did about the failed request.
const (
	ActionStop   = "stop"   // stopped the VM; the request is retried on cont
	ActionReport = "report" // the guest saw the error
	ActionIgnore = "ignore"
)

// Error is a QMP error reply: the command ran and failed, unlike a broken connection.
type Error struct {
	Class string `json:"class"` // e.g. "GenericError", "CommandNotFound"
	Desc  string `json:"desc"`
}

func (e *Error) Error() string { return "qmp: " + e.Class + ": " + e.Desc }

// Event is one asynchronous event.
type Event struct {
	Name string
	Data json.RawMessage // nil when the event has none
	Time time.Time       // when QEMU emitted it (its clock); zero if it gave none
}

// BlockIOError is the data of a BLOCK_IO_ERROR event.
type BlockIOError struct {
	Device    string `json:"device"`    // the drive's id; "" for a drive made with -blockdev
	NodeName  string `json:"node-name"` // the node that failed
	Operation string `json:"operation"` // "read" or "write"
	Action    string `json:"action"`    // Action*
	NoSpace   bool   `json:"nospace"`   // the error was ENOSPC
	Reason    string `json:"reason"`    // the error as text, e.g. "No space left on device"
}

// BlockIOError decodes the data of a BLOCK_IO_ERROR event.
func (e Event) BlockIOError() (BlockIOError, error) {
	if e.Name != EventBlockIOError {
		return BlockIOError{}, fmt.Errorf("qmp: event %q is not %s", e.Name, EventBlockIOError)
	}
	var b BlockIOError
	if err := json.Unmarshal(e.Data, &b); err != nil {
		return BlockIOError{}, fmt.Errorf("qmp: decode %s: %w", e.Name, err)
	}
	return b, nil
}

// Status is query-status's reply.
type Status struct {
	Status  string `json:"status"` // Status*, or another of QEMU's run states
	Running bool   `json:"running"`
}

// Block is one drive of query-block.
type Block struct {
	Device   string    `json:"device"` // the drive's id; "" for a drive made with -blockdev
	QDev     string    `json:"qdev"`   // the guest device's QOM path or id
	IOStatus string    `json:"io-status"`
	Inserted *Inserted `json:"inserted"` // nil when no medium (an empty CD-ROM)
}

// Inserted is the medium a drive has open: its top block node.
type Inserted struct {
	File     string `json:"file"`
	NodeName string `json:"node-name"`
	Drv      string `json:"drv"` // the format driver: "qcow2", "raw", ...
	RO       bool   `json:"ro"`
	// WriteThreshold is the offset (of the node's protocol layer) whose crossing emits
	// BLOCK_WRITE_THRESHOLD once; 0 when unset.
	WriteThreshold uint64 `json:"write_threshold"`
	Image          *Image `json:"image"`
}

// Image is one image of a drive's chain, from the top down through BackingImage.
type Image struct {
	Filename     string `json:"filename"`
	Format       string `json:"format"`
	VirtualSize  uint64 `json:"virtual-size"`
	ActualSize   uint64 `json:"actual-size"` // bytes allocated on the host; 0 if unknown
	BackingImage *Image `json:"backing-image"`
}

// Blockstats is one drive of query-blockstats, or a node under it.
type Blockstats struct {
	Device   string `json:"device"` // "" below a drive, and for -blockdev drives
	QDev     string `json:"qdev"`
	NodeName string `json:"node-name"`
	Stats    Stats  `json:"stats"`
	// Parent is the protocol layer under a format node: for a qcow2 drive, the file
	// or logical volume itself, whose Stats.WrHighestOffset is how far the image
	// reaches on it, the figure thin provisioning watches.
	Parent *Blockstats `json:"parent"`
}

// Stats is the part of a node's I/O statistics lvwatch uses.
type Stats struct {
	WrBytes            uint64 `json:"wr_bytes"`
	WrOperations       uint64 `json:"wr_operations"` // completed writes
	FailedWrOperations uint64 `json:"failed_wr_operations"`
	// WrHighestOffset is the end of the highest byte written to this node since QEMU
	// opened it (the guest's offset on a format node, the image's on its Parent).
	WrHighestOffset uint64 `json:"wr_highest_offset"`
}

// What decoder.next makes of one message.
type kind int

const (
	kindGreeting kind = iota + 1
	kindReply
	kindEvent
)

// How a reply names the command it answers.
type idKind int

const (
	idNone  idKind = iota // no id
	idOurs                // a number, as this client sends
	idOther               // something else: not an answer to this client
)

type reply struct {
	ret json.RawMessage // set for a success, even "null"
	err *Error          // set for an error reply
}

type message struct {
	kind    kind
	version Version // kindGreeting
	id      idKind  // kindReply
	num     uint64  // the id, for idOurs
	reply   reply   // kindReply
	event   Event   // kindEvent
}

// decoder splits the peer's stream into messages. QMP separates them with "\r\n",
// but a message's length is unknown in advance (query-block grows with every drive
// and backing file), so a json.Decoder finds where each ends, reading through a
// limit that is reset per message.
type decoder struct {
	lr  io.LimitedReader
	dec *json.Decoder
	max int64
}

func newDecoder(r io.Reader, max int64) *decoder {
	d := &decoder{lr: io.LimitedReader{R: r}, max: max}
	d.dec = json.NewDecoder(&d.lr)
	return d
}

// next returns the next message. Any error is final: after a malformed message the
// stream has no reliable boundary to resume at.
func (d *decoder) next() (message, error) {
	d.lr.N = d.max
	var raw json.RawMessage
	if err := d.dec.Decode(&raw); err != nil {
		var syntax *json.SyntaxError
		switch {
		case d.lr.N <= 0 && (errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)):
			return message{}, fmt.Errorf("message longer than %d bytes", d.max)
		case errors.Is(err, io.EOF):
			return message{}, fmt.Errorf("peer closed the connection: %w", err)
		case errors.Is(err, io.ErrUnexpectedEOF):
			return message{}, fmt.Errorf("peer closed the connection mid-message: %w", err)
		case errors.As(err, &syntax):
			return message{}, fmt.Errorf("malformed message: %w", err)
		}
		return message{}, fmt.Errorf("read: %w", err)
	}
	return parseMessage(raw)
}

// wire is a QMP message as sent: exactly one of QMP, Return, Error and Event.
type wire struct {
	QMP *struct {
		Version struct {
			QEMU    Version `json:"qemu"`
			Package string  `json:"package"`
		} `json:"version"`
	} `json:"QMP"`
	Return    json.RawMessage `json:"return"`
	Error     *Error          `json:"error"`
	ID        json.RawMessage `json:"id"`
	Event     *string         `json:"event"`
	Data      json.RawMessage `json:"data"`
	Timestamp *struct {
		Seconds      int64 `json:"seconds"`
		Microseconds int64 `json:"microseconds"`
	} `json:"timestamp"`
}

// parseMessage classifies one JSON value from the peer.
func parseMessage(raw []byte) (message, error) {
	var w wire
	if err := json.Unmarshal(raw, &w); err != nil {
		return message{}, fmt.Errorf("malformed message %.40q: %w", raw, err)
	}
	n := 0
	for _, present := range []bool{w.QMP != nil, w.Return != nil, w.Error != nil, w.Event != nil} {
		if present {
			n++
		}
	}
	if n != 1 {
		return message{}, fmt.Errorf("not one QMP greeting, reply or event: %.40q", raw)
	}
	switch {
	case w.QMP != nil:
		v := w.QMP.Version.QEMU
		v.Package = w.QMP.Version.Package
		return message{kind: kindGreeting, version: v}, nil
	case w.Event != nil:
		if *w.Event == "" {
			return message{}, fmt.Errorf("event without a name: %.40q", raw)
		}
		e := Event{Name: *w.Event, Data: w.Data}
		if ts := w.Timestamp; ts != nil {
			if ts.Microseconds < 0 || ts.Microseconds >= 1e6 {
				return message{}, fmt.Errorf("event %.40q: timestamp with %d microseconds", *w.Event, ts.Microseconds)
			}
			e.Time = time.Unix(ts.Seconds, ts.Microseconds*1e3)
		}
		return message{kind: kindEvent, event: e}, nil
	}
	m := message{kind: kindReply, reply: reply{ret: w.Return, err: w.Error}}
	if w.ID != nil {
		m.id = idOther
		if err := json.Unmarshal(w.ID, &m.num); err == nil && string(w.ID) != "null" {
			m.id = idOurs
		}
	}
	return m, nil
}

// encodeCommand is one command as QMP takes it.
func encodeCommand(command string, id uint64, args any) ([]byte, error) {
	b, err := json.Marshal(struct {
		Execute   string `json:"execute"`
		Arguments any    `json:"arguments,omitempty"`
		ID        uint64 `json:"id"`
	}{command, args, id})
	if err != nil {
		return nil, fmt.Errorf("encode: %w", err)
	}
	return append(b, '\r', '\n'), nil
}
