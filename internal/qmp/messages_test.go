package qmp

import (
	"bytes"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The files in testdata/ are what QEMU 7.2 sent, byte for byte (testdata/README.md
// says how they were recorded); these tests decode them through the client, as
// replies to its own calls.

// replay is a fake QEMU that answers each command with the recorded reply named for it.
func replay(t *testing.T, replies map[string]string) *Conn {
	t.Helper()
	return session(t, func(p *peer) {
		for {
			cmd, ok := p.next()
			if !ok {
				return
			}
			name, ok := replies[cmd.Execute]
			if !ok {
				p.t.Errorf("unexpected command %q", cmd.Execute)
				return
			}
			if cmd.Execute == "query-blockstats" && string(cmd.Arguments) != `{"query-nodes":false}` {
				p.t.Errorf("query-blockstats arguments %s", cmd.Arguments)
			}
			p.replayFile(cmd, name)
		}
	})
}

func TestRecordedStatus(t *testing.T) {
	for file, want := range map[string]Status{
		"query-status-prelaunch.json": {StatusPrelaunch, false},
		"query-status-running.json":   {StatusRunning, true},
		"query-status-paused.json":    {StatusPaused, false},
		"query-status-io-error.json":  {StatusIOError, false},
	} {
		c := replay(t, map[string]string{"query-status": file})
		s, err := c.QueryStatus(testCtx(t))
		if err != nil || s != want {
			t.Errorf("%s: %+v, %v; want %+v", file, s, err, want)
		}
	}
}

func TestRecordedErrors(t *testing.T) {
	c := replay(t, map[string]string{"query-status": "error-bad-argument.json"})
	err := c.Execute(testCtx(t), "query-status", map[string]int{"bogus": 1}, nil)
	var qe *Error
	if !errors.As(err, &qe) || *qe != (Error{"GenericError", "Parameter 'bogus' is unexpected"}) {
		t.Errorf("error %v", err)
	}
	c = replay(t, map[string]string{"cont": "return-empty.json"})
	if err := c.Cont(testCtx(t)); err != nil {
		t.Error(err)
	}
}

// findDevice returns the entry of items for the drive device.
func findDevice[T any](t *testing.T, items []T, device string, deviceOf func(T) string) T {
	t.Helper()
	for _, it := range items {
		if deviceOf(it) == device {
			return it
		}
	}
	t.Fatalf("no drive %q in %+v", device, items)
	var zero T
	return zero
}

func findBlock(t *testing.T, blocks []Block, device string) Block {
	t.Helper()
	return findDevice(t, blocks, device, func(b Block) string { return b.Device })
}

func TestRecordedBlock(t *testing.T) {
	// The drive of the brief's VM: qcow2, cache=none, werror=stop, on virtio-blk.
	c := replay(t, map[string]string{"query-block": "query-block.json"})
	blocks, err := c.QueryBlock(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(blocks) != 1 {
		t.Fatalf("%d drives", len(blocks))
	}
	b := blocks[0]
	if b.Device != "d0" || b.QDev != "/machine/peripheral-anon/device[0]/virtio-backend" || b.IOStatus != IOStatusOK {
		t.Errorf("drive %+v", b)
	}
	in := b.Inserted
	if in == nil || in.Image == nil {
		t.Fatalf("inserted %+v", in)
	}
	const file = "/tmp/qmp-record/vm-100-disk-0.qcow2"
	if in.File != file || in.Drv != "qcow2" || !strings.HasPrefix(in.NodeName, "#block") || in.RO || in.WriteThreshold != 0 {
		t.Errorf("inserted %+v", in)
	}
	if want := (Image{Filename: file, Format: "qcow2", VirtualSize: 1 << 30, ActualSize: 200704}); *in.Image != want {
		t.Errorf("image %+v, want %+v", in.Image, want)
	}

	// A qcow2 overlay on a qcow2 base.
	c = replay(t, map[string]string{"query-block": "query-block-backing.json"})
	if blocks, err = c.QueryBlock(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	img := findBlock(t, blocks, "d0").Inserted.Image
	if img.Filename != "/tmp/qmp-record/top.qcow2" || img.BackingImage == nil ||
		img.BackingImage.Filename != "/tmp/qmp-record/base.qcow2" || img.BackingImage.Format != "qcow2" ||
		img.BackingImage.BackingImage != nil {
		t.Errorf("chain %+v", img)
	}

	// A VM that QEMU stopped on ENOSPC: d1's qcow2 sat on a full tmpfs.
	c = replay(t, map[string]string{"query-block": "query-block-nospace.json"})
	if blocks, err = c.QueryBlock(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if s := findBlock(t, blocks, "d1").IOStatus; s != IOStatusNoSpace {
		t.Errorf("d1 io-status %q", s)
	}
	if s := findBlock(t, blocks, "boot").IOStatus; s != IOStatusOK {
		t.Errorf("boot io-status %q", s)
	}
}

func findStats(t *testing.T, stats []Blockstats, device string) Blockstats {
	t.Helper()
	return findDevice(t, stats, device, func(s Blockstats) string { return s.Device })
}

func TestRecordedBlockstats(t *testing.T) {
	c := replay(t, map[string]string{"query-blockstats": "query-blockstats.json"})
	stats, err := c.QueryBlockstats(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	s := findStats(t, stats, "d0")
	if s.QDev != "/machine/peripheral-anon/device[0]/virtio-backend" || !strings.HasPrefix(s.NodeName, "#block") ||
		s.Parent == nil || s.Parent.Device != "" || !strings.HasPrefix(s.Parent.NodeName, "#block") || s.Parent.Parent != nil {
		t.Errorf("d0 %+v", s)
	}

	// One 512-byte write at offset 0 failed with ENOSPC: the format node saw the
	// guest's offset, the file under it the cluster qcow2 tried to allocate.
	c = replay(t, map[string]string{"query-blockstats": "query-blockstats-nospace.json"})
	if stats, err = c.QueryBlockstats(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	s = findStats(t, stats, "d1")
	if s.Stats != (Stats{WrHighestOffset: 512}) || s.Parent == nil || s.Parent.Stats != (Stats{WrHighestOffset: 327680}) {
		t.Errorf("d1 %+v, parent %+v", s, s.Parent)
	}

	c = replay(t, map[string]string{"query-blockstats": "query-blockstats-backing.json"})
	if stats, err = c.QueryBlockstats(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	if s := findStats(t, stats, "d0"); s.Parent == nil {
		t.Errorf("d0 %+v", s)
	}
}

// decodeFile decodes one recorded message.
func decodeFile(t *testing.T, name string) message {
	t.Helper()
	m, err := newDecoder(bytes.NewReader(testdata(t, name)), MaxMessage).next()
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return m
}

func TestRecordedEvents(t *testing.T) {
	m := decodeFile(t, "event-block-io-error.json")
	if m.kind != kindEvent || m.event.Name != EventBlockIOError ||
		!m.event.Time.Equal(time.Unix(1796138647, 450062000)) {
		t.Fatalf("%+v", m)
	}
	b, err := m.event.BlockIOError()
	if err != nil {
		t.Fatal(err)
	}
	if want := (BlockIOError{Device: "d1", NodeName: "#block388", Operation: "write", Action: ActionStop,
		NoSpace: true, Reason: "No space left on device"}); b != want {
		t.Errorf("%+v, want %+v", b, want)
	}

	for file, name := range map[string]string{"event-stop.json": EventStop, "event-resume.json": EventResume} {
		m := decodeFile(t, file)
		if m.kind != kindEvent || m.event.Name != name || m.event.Data != nil || m.event.Time.IsZero() {
			t.Errorf("%s: %+v", file, m)
		}
		if _, err := m.event.BlockIOError(); err == nil {
			t.Errorf("%s decoded as %s", file, EventBlockIOError)
		}
	}
	if _, err := (Event{Name: EventBlockIOError, Data: json.RawMessage(`{"nospace": "yes"}`)}).BlockIOError(); err == nil {
		t.Error("a string nospace decoded")
	}
}

func TestRecordedStream(t *testing.T) {
	// Every recorded message, back to back as on the socket, then the end.
	files, err := filepath.Glob("testdata/*.json")
	if err != nil || len(files) == 0 {
		t.Fatal("no testdata", err)
	}
	var stream []byte
	for _, f := range files {
		stream = append(stream, testdata(t, filepath.Base(f))...)
	}
	d := newDecoder(bytes.NewReader(stream), MaxMessage)
	for _, f := range files {
		m, err := d.next()
		if err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if strings.Contains(f, "event-") != (m.kind == kindEvent) || strings.Contains(f, "greeting") != (m.kind == kindGreeting) {
			t.Errorf("%s decoded as kind %d", f, m.kind)
		}
		if m.kind == kindReply && m.id != idOurs {
			t.Errorf("%s: id %d", f, m.id)
		}
	}
	if _, err := d.next(); err == nil || !strings.Contains(err.Error(), "peer closed") {
		t.Errorf("at the end: %v", err)
	}
}

func TestDecoderLimit(t *testing.T) {
	// The limit is per message: many messages may pass through one decoder, however
	// much they add up to, but no single one may exceed it.
	msg := testdata(t, "query-block.json")
	d := newDecoder(bytes.NewReader(bytes.Repeat(msg, 100)), int64(2*len(msg)))
	for i := range 100 {
		if _, err := d.next(); err != nil {
			t.Fatalf("message %d: %v", i, err)
		}
	}
	d = newDecoder(bytes.NewReader(msg), int64(len(msg)/2))
	if _, err := d.next(); err == nil || !strings.Contains(err.Error(), "longer than") {
		t.Errorf("a message over the limit: %v", err)
	}
}

// FuzzDecode feeds arbitrary bytes through the decoder that turns the socket's stream
// into routed messages, and the typed decoders after it: errors are fine, panics and
// inconsistent messages are not.
func FuzzDecode(f *testing.F) {
	files, err := filepath.Glob("testdata/*.json")
	if err != nil || len(files) == 0 {
		f.Fatal("no testdata", err)
	}
	var all []byte
	for _, name := range files {
		b := testdata(f, filepath.Base(name))
		f.Add(b)
		all = append(all, b...)
	}
	f.Add(all)
	f.Add([]byte(`{"return": null, "id": null}{"event": "X", "data": null}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		d := newDecoder(bytes.NewReader(b), 1<<16)
		for range 1000 {
			m, err := d.next()
			if err != nil {
				if !strings.Contains(err.Error(), " ") {
					t.Fatalf("unhelpful error %q", err)
				}
				return
			}
			switch m.kind {
			case kindGreeting:
			case kindReply:
				if (m.reply.ret == nil) == (m.reply.err == nil) {
					t.Fatalf("reply with return %q and error %v", m.reply.ret, m.reply.err)
				}
				if m.reply.ret != nil {
					var s Status
					var blocks []Block
					var stats []Blockstats
					json.Unmarshal(m.reply.ret, &s)
					json.Unmarshal(m.reply.ret, &blocks)
					json.Unmarshal(m.reply.ret, &stats)
				}
			case kindEvent:
				if m.event.Name == "" {
					t.Fatal("event without a name")
				}
				m.event.BlockIOError()
			default:
				t.Fatalf("message of kind %d", m.kind)
			}
		}
	})
}
