package qmp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/lvwatch/lvwatch/internal/testutil"
)

// The tests in this file run the client against a fake QMP peer: the protocol logic
// (framing, routing, limits) is pure, and a fake can misbehave in ways QEMU does not.
// qemu_test.go meets a real QEMU.

// backstop bounds a test's calls that should not block at all: it turns a hang into
// a failure, it measures nothing.
const backstop = 30 * time.Second

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), backstop)
	t.Cleanup(cancel)
	return ctx
}

// peer is the fake QEMU's side of one connection.
type peer struct {
	t   *testing.T
	c   net.Conn
	dec *json.Decoder
}

// command is one command the client sent.
type command struct {
	Execute   string          `json:"execute"`
	Arguments json.RawMessage `json:"arguments"`
	ID        json.RawMessage `json:"id"`
}

// fakeQEMU listens on a unix socket in a new directory and runs serve on the first
// connection; the test's cleanup waits for serve to return.
func fakeQEMU(t *testing.T, serve func(p *peer)) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "qmp.sock")
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		c, err := l.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		serve(&peer{t: t, c: c, dec: json.NewDecoder(c)})
	}()
	t.Cleanup(func() {
		l.Close()
		<-done
	})
	return path
}

// next reads the client's next command; false once the client is gone.
func (p *peer) next() (command, bool) {
	var c command
	if err := p.dec.Decode(&c); err != nil {
		return command{}, false
	}
	return c, true
}

// drain reads commands until the client closes, answering none.
func (p *peer) drain() {
	for {
		if _, ok := p.next(); !ok {
			return
		}
	}
}

func (p *peer) send(lines ...string) {
	for _, l := range lines {
		if !strings.HasSuffix(l, "\n") {
			l += "\r\n"
		}
		if _, err := io.WriteString(p.c, l); err != nil {
			return // the client left; the test says whether that was expected
		}
	}
}

// reply answers cmd with the return value ret (JSON).
func (p *peer) reply(cmd command, ret string) {
	p.send(fmt.Sprintf(`{"return": %s, "id": %s}`, ret, cmd.ID))
}

// replayFile answers cmd with a reply QEMU sent, byte for byte but for its id,
// replaced by cmd's. QEMU puts the id first or last.
func (p *peer) replayFile(cmd command, name string) {
	b := testdata(p.t, name)
	for _, re := range []*regexp.Regexp{recordedIDFirst, recordedIDLast} {
		if loc := re.FindSubmatchIndex(b); loc != nil {
			p.send(string(b[:loc[2]]) + string(cmd.ID) + string(b[loc[3]:]))
			return
		}
	}
	p.t.Errorf("%s: no id", name)
}

var (
	recordedIDFirst = regexp.MustCompile(`^\{"id": ([0-9]+), `)
	recordedIDLast  = regexp.MustCompile(`, "id": ([0-9]+)\}\r\n$`)
)

// handshake greets as QEMU 7.2 did and accepts qmp_capabilities.
func (p *peer) handshake() bool {
	p.send(string(testdata(p.t, "greeting.json")))
	cmd, ok := p.next()
	if !ok {
		return false
	}
	if cmd.Execute != "qmp_capabilities" {
		p.t.Errorf("first command %q, want qmp_capabilities", cmd.Execute)
		return false
	}
	p.reply(cmd, "{}")
	return true
}

func testdata(t testing.TB, name string) []byte {
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Error(err)
	}
	return b
}

func dial(t *testing.T, path string) *Conn {
	t.Helper()
	c, err := Dial(testCtx(t), path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// session is a fake QEMU that greets, runs script, then reads commands (answering
// none) until the client leaves; it returns the client's Conn.
func session(t *testing.T, script func(p *peer)) *Conn {
	t.Helper()
	return dial(t, fakeQEMU(t, func(p *peer) {
		if p.handshake() {
			script(p)
			p.drain()
		}
	}))
}

// requireNoReader fails unless every Conn's reader goroutine has ended.
func requireNoReader(t *testing.T) {
	t.Helper()
	testutil.WaitFor(t, backstop, "the reader goroutine to end", func() bool {
		buf := make([]byte, 1<<20)
		return !strings.Contains(string(buf[:runtime.Stack(buf, true)]), "qmp.(*Conn).read(")
	})
}

func TestDial(t *testing.T) {
	c := session(t, func(p *peer) {})
	if v, want := c.Version(), (Version{7, 2, 22, "Debian 1:7.2+dfsg-7+deb12u18+b3"}); v != want {
		t.Errorf("version %+v, want %+v", v, want)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, ok := <-c.Events(); ok {
		t.Error("Events not closed by Close")
	}
	if _, err := c.QueryStatus(testCtx(t)); !errors.Is(err, ErrClosed) {
		t.Errorf("call after Close: %v, want ErrClosed", err)
	}
	requireNoReader(t)
}

func TestDialNoGreeting(t *testing.T) {
	// A monitor socket held by another client: the connection is made, the greeting
	// never comes.
	path := fakeQEMU(t, func(p *peer) { p.drain() })
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := Dial(ctx, path)
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "greeting") {
		t.Fatalf("Dial: %v, want the deadline, waiting for the greeting", err)
	}
}

func TestDialCanceled(t *testing.T) {
	// Cancellation without a deadline must wake the blocked read too.
	asked := make(chan struct{})
	path := fakeQEMU(t, func(p *peer) {
		p.send(string(testdata(t, "greeting.json")))
		p.next()
		close(asked)
		p.drain() // never answers qmp_capabilities
	})
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		<-asked
		cancel()
	}()
	_, err := Dial(ctx, path)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "qmp_capabilities") {
		t.Fatalf("Dial: %v, want canceled during qmp_capabilities", err)
	}
}

func TestDialRefused(t *testing.T) {
	for name, serve := range map[string]func(p *peer){
		"not a greeting": func(p *peer) { p.send(`{"return": {}}`); p.drain() },
		"capabilities error": func(p *peer) {
			p.send(string(testdata(p.t, "greeting.json")))
			if cmd, ok := p.next(); ok {
				p.send(fmt.Sprintf(`{"error": {"class": "CommandNotFound", "desc": "no"}, "id": %s}`, cmd.ID))
			}
			p.drain()
		},
		"closed": func(p *peer) {},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := Dial(testCtx(t), fakeQEMU(t, serve))
			if err == nil {
				t.Fatal("Dial succeeded")
			}
			var qe *Error
			if errors.As(err, &qe) != (name == "capabilities error") {
				t.Errorf("Dial: %v", err)
			}
			t.Log(err)
		})
	}
}

func TestEventsBeforeReply(t *testing.T) {
	// cont emits RESUME, which QEMU may send before cont's reply.
	c := session(t, func(p *peer) {
		cmd, _ := p.next()
		if cmd.Execute != "cont" {
			t.Errorf("command %q, want cont", cmd.Execute)
		}
		p.send(string(testdata(t, "event-resume.json")), string(testdata(t, "event-block-io-error.json")))
		p.reply(cmd, "{}")
		cmd, _ = p.next()
		p.send(string(testdata(t, "event-stop.json")))
		p.replayFile(cmd, "query-status-running.json")
	})
	ctx := testCtx(t)
	if err := c.Cont(ctx); err != nil {
		t.Fatal(err)
	}
	s, err := c.QueryStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s != (Status{StatusRunning, true}) {
		t.Errorf("status %+v", s)
	}
	var names []string
	for range 3 {
		names = append(names, (<-c.Events()).Name)
	}
	if got := strings.Join(names, " "); got != "RESUME BLOCK_IO_ERROR STOP" {
		t.Errorf("events %s", got)
	}
	if n := c.DroppedEvents(); n != 0 {
		t.Errorf("%d dropped", n)
	}
}

func TestRepliesRoutedByID(t *testing.T) {
	// Two calls at once, answered in reverse order, after replies that answer neither:
	// one with an id this client never sent, one with a string id, one without id.
	c := session(t, func(p *peer) {
		a, _ := p.next()
		b, _ := p.next()
		p.send(`{"return": {"name": "stray"}, "id": 999}`,
			`{"return": {"name": "stray"}, "id": "x"}`,
			`{"return": {"name": "stray"}}`)
		p.reply(b, fmt.Sprintf(`{"name": %q}`, b.Execute))
		p.reply(a, fmt.Sprintf(`{"name": %q}`, a.Execute))
	})
	ctx := testCtx(t)
	errs := make(chan error, 2)
	for _, name := range []string{"first", "second"} {
		go func() {
			var r struct{ Name string }
			err := c.Execute(ctx, name, nil, &r)
			if err == nil && r.Name != name {
				err = fmt.Errorf("%s got the reply to %s", name, r.Name)
			}
			errs <- err
		}()
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
}

func TestLateReplyDropped(t *testing.T) {
	// A reply that comes after its caller gave up must not answer the next call.
	c := session(t, func(p *peer) {
		slow, _ := p.next()
		next, _ := p.next() // sent only once the first call gave up
		p.reply(slow, `{"status": "late", "running": false}`)
		p.replayFile(next, "query-status-paused.json")
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := c.QueryStatus(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("first call: %v, want the deadline", err)
	}
	s, err := c.QueryStatus(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	if s.Status != StatusPaused {
		t.Errorf("second call got %+v", s)
	}
}

func TestErrorReply(t *testing.T) {
	c := session(t, func(p *peer) {
		cmd, _ := p.next()
		p.replayFile(cmd, "error-command-not-found.json")
		cmd, _ = p.next()
		p.reply(cmd, `"not a status"`)
		cmd, _ = p.next()
		p.replayFile(cmd, "query-status-io-error.json")
	})
	ctx := testCtx(t)
	err := c.Execute(ctx, "no-such-command", nil, nil)
	var qe *Error
	if !errors.As(err, &qe) || qe.Class != "CommandNotFound" {
		t.Fatalf("error %v, want a CommandNotFound *Error", err)
	}
	if want := "qmp no-such-command: qmp: CommandNotFound: The command no-such-command has not been found"; err.Error() != want {
		t.Errorf("error text %q, want %q", err, want)
	}
	// A reply of the wrong shape fails the call, not the connection.
	if _, err := c.QueryStatus(ctx); err == nil || !strings.Contains(err.Error(), "decode reply") {
		t.Errorf("wrong-shaped reply: %v", err)
	}
	s, err := c.QueryStatus(ctx)
	if err != nil || s != (Status{StatusIOError, false}) {
		t.Errorf("after errors: %+v, %v", s, err)
	}
}

func TestNoAnswer(t *testing.T) {
	got := make(chan string, 2)
	c := session(t, func(p *peer) {
		for {
			cmd, ok := p.next()
			if !ok {
				return
			}
			got <- cmd.Execute
		}
	})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := c.Cont(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Cont: %v, want the deadline", err)
	}
	// A call without a deadline ends with Close.
	errc := make(chan error, 1)
	go func() { errc <- c.Execute(context.Background(), "query-status", nil, nil) }()
	<-got
	<-got
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrClosed) {
		t.Errorf("pending call after Close: %v, want ErrClosed", err)
	}
	requireNoReader(t)
}

func TestPeerCloses(t *testing.T) {
	for name, tc := range map[string]struct {
		send string
		want error
	}{
		"mid-reply":     {`{"return": {"status": "runn`, io.ErrUnexpectedEOF},
		"between lines": {"", io.EOF},
	} {
		t.Run(name, func(t *testing.T) {
			c := session(t, func(p *peer) {
				p.next()
				io.WriteString(p.c, tc.send)
				p.c.Close()
			})
			ctx := testCtx(t)
			if _, err := c.QueryStatus(ctx); !errors.Is(err, tc.want) {
				t.Fatalf("call: %v, want %v", err, tc.want)
			}
			if _, ok := <-c.Events(); ok {
				t.Error("Events still open")
			}
			if _, err := c.QueryStatus(ctx); !errors.Is(err, tc.want) {
				t.Errorf("next call: %v, want the same cause", err)
			}
			if err := c.Close(); err != nil {
				t.Errorf("Close: %v", err)
			}
			requireNoReader(t)
		})
	}
}

func TestGarbage(t *testing.T) {
	for name, tc := range map[string]struct{ send, want string }{
		"text":              {"hello\r\n", "malformed"},
		"array":             {"[1, 2]\r\n", "malformed"},
		"number":            {"42\r\n", "malformed"},
		"null":              {"null\r\n", "not one QMP"},
		"no kind":           {`{"foo": 1}`, "not one QMP"},
		"two kinds":         {`{"return": {}, "event": "STOP"}`, "not one QMP"},
		"nameless event":    {`{"event": ""}`, "without a name"},
		"bad timestamp":     {`{"event": "STOP", "timestamp": {"seconds": "soon"}}`, "malformed"},
		"bad microseconds":  {`{"event": "STOP", "timestamp": {"seconds": 1, "microseconds": 1000000}}`, "microseconds"},
		"second greeting":   {string(testdata(t, "greeting.json")), "greeting"},
		"deep nesting":      {strings.Repeat("[", 100000), "malformed"},
		"unterminated":      {`{"return": "` + strings.Repeat("a", MaxMessage), "longer than"},
		"endless blank":     {strings.Repeat(" ", MaxMessage+1), "longer than"},
		"control character": {"{\"return\": \"\x00\"}", "malformed"},
	} {
		t.Run(name, func(t *testing.T) {
			c := session(t, func(p *peer) {
				p.next()
				io.WriteString(p.c, tc.send)
			})
			_, err := c.QueryStatus(testCtx(t))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("call: %v, want an error with %q", err, tc.want)
			}
			if len(err.Error()) > 300 {
				t.Errorf("error of %d bytes: the peer's garbage should not fill logs", len(err.Error()))
			}
			t.Log(err)
		})
	}
}

func TestEventOverflow(t *testing.T) {
	// Nobody reads Events while more than EventBuffer arrive: the reply after them
	// must still come through, and the newest events survive.
	const extra = 10
	c := session(t, func(p *peer) {
		cmd, _ := p.next()
		for i := range EventBuffer + extra {
			p.send(fmt.Sprintf(`{"timestamp": {"seconds": %d, "microseconds": 0}, "event": "E", "data": {"n": %d}}`, 1000+i, i))
		}
		p.reply(cmd, "{}")
	})
	if err := c.Execute(testCtx(t), "x", nil, nil); err != nil {
		t.Fatal(err)
	}
	if n := c.DroppedEvents(); n != extra {
		t.Errorf("%d dropped, want %d", n, extra)
	}
	if n := len(c.Events()); n != EventBuffer {
		t.Fatalf("%d events queued, want %d", n, EventBuffer)
	}
	for i := extra; i < EventBuffer+extra; i++ {
		e := <-c.Events()
		var d struct{ N int }
		if err := json.Unmarshal(e.Data, &d); err != nil || d.N != i || !e.Time.Equal(time.Unix(int64(1000+i), 0)) {
			t.Fatalf("event %+v (%v), want number %d", e, err, i)
		}
	}
}
