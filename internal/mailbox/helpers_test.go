package mailbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// directDir returns a directory for volume files where O_DIRECT works: the test's
// temporary directory, or one under /var/tmp when that is on a file system that
// refuses O_DIRECT (tmpfs on older kernels).
func directDir(t testing.TB) string {
	dir := t.TempDir()
	v, err := OpenVolume(filepath.Join(dir, "probe"), VolumeOptions{Create: true})
	if err == nil {
		v.Close()
		return dir
	}
	if !errors.Is(err, ErrDirectIO) {
		t.Fatal(err)
	}
	dir, err = os.MkdirTemp("/var/tmp", "lvwatch-mailbox-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// testVolumes creates a zeroed inbox and outbox.
func testVolumes(t testing.TB) (inbox, outbox string) {
	dir := directDir(t)
	inbox, outbox = filepath.Join(dir, "inbox"), filepath.Join(dir, "outbox")
	for _, p := range []string{inbox, outbox} {
		v, err := OpenVolume(p, VolumeOptions{Create: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Init(); err != nil {
			t.Fatal(err)
		}
		v.Close()
	}
	return inbox, outbox
}

// testLog sends the package's logs to the test log.
func testLog(t testing.TB) zerolog.Logger {
	return zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
}

// raw reads and writes the volumes block by block, to play a peer by hand.
type raw struct {
	t       testing.TB
	in, out *Volume
	buf     []byte
}

func openRaw(t testing.TB, inbox, outbox string) *raw {
	in, out, err := openVolumes(inbox, outbox, VolumeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close(); out.Close() })
	return &raw{t: t, in: in, out: out, buf: AlignedBuffer(BlockSize)}
}

func (r *raw) read(v *Volume, id int) Mailbox {
	r.t.Helper()
	if err := v.ReadAt(r.buf, blockOffset(id)); err != nil {
		r.t.Fatal(err)
	}
	return Mailbox(r.buf)
}

func (r *raw) write(v *Volume, id int, mb Mailbox) {
	r.t.Helper()
	copy(r.buf, mb[:])
	if err := v.WriteAt(r.buf, blockOffset(id)); err != nil {
		r.t.Fatal(err)
	}
}

// hostWrite writes a host's mailbox and a fresh events block, as a vdsm host does.
func (r *raw) hostWrite(id int, mb Mailbox) {
	r.t.Helper()
	r.write(r.in, id, mb)
	r.write(r.in, 0, EncodeEvent(EventID{byte(time.Now().UnixNano()), byte(id), 0xee}))
}

// waitNoError waits up to patience for done and fails the test on an error or
// on the wait running out (what says what did not come).
func waitNoError(t testing.TB, done <-chan error, what string) {
	t.Helper()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(patience):
		t.Fatal(what)
	}
}

// recorder is a test Handler: it records every request and grants it, fails it, or
// holds it unanswered, and records the cancellation of held ones.
type recorder struct {
	mu        sync.Mutex
	requests  []Request
	held      []*Reply
	cancelled []Request
	fail      bool
	hold      bool
}

func (r *recorder) HandleExtend(ctx context.Context, req Request, reply *Reply) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.requests = append(r.requests, req)
	switch {
	case r.hold:
		r.held = append(r.held, reply)
		go func() {
			<-ctx.Done()
			if errors.Is(context.Cause(ctx), ErrWithdrawn) {
				r.mu.Lock()
				r.cancelled = append(r.cancelled, req)
				r.mu.Unlock()
			}
		}()
	case r.fail:
		reply.Fail(fmt.Errorf("test failure"))
	default:
		reply.Grant(req.SizeMiB)
	}
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.requests)
}

func (r *recorder) cancels() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.cancelled)
}

// fastSPM is an SPM configuration for tests: quick full scans.
func fastSPM(t testing.TB, inbox, outbox string, h Handler) *SPM {
	t.Helper()
	s, err := OpenSPM(SPMConfig{Inbox: inbox, Outbox: outbox, Handler: h, Log: testLog(t), ScanInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func openTestHost(t testing.TB, inbox, outbox string, id int) *Host {
	t.Helper()
	h, err := OpenHost(HostConfig{Inbox: inbox, Outbox: outbox, HostID: id, Log: testLog(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), patience)
		defer cancel()
		h.Close(ctx)
	})
	return h
}

// closeNow closes h without waiting for its handshakes.
func closeNow(h *Host) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	h.Close(ctx)
}

// volumeUUID returns a distinct volume UUID for n.
func volumeUUID(n int) UUID {
	u := refVolume
	u[12], u[13], u[14], u[15] = byte(n>>24), byte(n>>16), byte(n>>8), byte(n)
	return u
}
