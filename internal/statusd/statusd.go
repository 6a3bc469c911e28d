// Package statusd serves a running agent's status snapshot on a unix socket,
// and fetches it for `lvwatch status`: HTTP over the socket, one route,
// GET /status, answering the snapshot's JSON.
package statusd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// DefaultSocket is where the agent serves its status.
const DefaultSocket = "/run/lvwatch/lvwatch.sock"

// Bounds of the server's connections and of a client's whole exchange.
const (
	readHeaderTimeout = 2 * time.Second
	readTimeout       = 5 * time.Second
	writeTimeout      = 10 * time.Second
	idleTimeout       = 30 * time.Second
	probeTimeout      = time.Second      // dialling an existing socket to see if it is live
	closeTimeout      = 2 * time.Second  // requests under way at Close
	fetchTimeout      = 10 * time.Second // Fetch with a context that has no deadline
)

// Server serves a snapshot on a unix socket until Close.
type Server struct {
	path string
	ino  fileID // the socket's file, removed at Close only if still ours
	srv  *http.Server
	ln   net.Listener
	done chan struct{}

	once sync.Once
	err  error
}

type fileID struct{ dev, ino uint64 }

// Serve listens on the unix socket path (mode 0600, its directory created
// 0755 if missing) and answers GET /status with the indented JSON of
// snapshot(), called once per request, possibly from several goroutines at
// once. A socket file already at path is replaced only if nothing answers on
// it (the previous agent died without removing it); one a live process
// listens on is refused, and so is a file that is not a socket.
func Serve(path string, snapshot func() any, log zerolog.Logger) (*Server, error) {
	log = log.With().Str("component", "statusd").Str("socket", path).Logger()
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	// Two agents starting at once: the one that takes the directory's lock
	// first creates the socket, the other finds it live.
	unlock, err := lockDir(dir)
	if err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	defer unlock()
	if err := clearStale(path); err != nil {
		return nil, err
	}
	ln, id, err := listen(path)
	if err != nil {
		return nil, fmt.Errorf("status socket: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		b, err := json.MarshalIndent(snapshot(), "", "  ")
		if err != nil {
			log.Error().Err(err).Msg("cannot encode the status")
			http.Error(w, "cannot encode the status: "+err.Error(), http.StatusInternalServerError)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Content-Length", strconv.Itoa(len(b)+1))
		w.Write(append(b, '\n'))
	})
	s := &Server{
		path: path,
		ino:  id,
		ln:   ln,
		done: make(chan struct{}),
		srv: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: readHeaderTimeout,
			ReadTimeout:       readTimeout,
			WriteTimeout:      writeTimeout,
			IdleTimeout:       idleTimeout,
			MaxHeaderBytes:    16 << 10,
			ErrorLog:          errorLog(log),
		},
	}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error().Err(err).Msg("status socket stopped")
		}
	}()
	return s, nil
}

// Path is the socket's path.
func (s *Server) Path() string { return s.path }

// Close stops serving, lets requests under way finish (for a short while) and
// removes the socket file, unless another file has replaced it since.
func (s *Server) Close() error {
	s.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		defer cancel()
		var errs []error
		if err := s.srv.Shutdown(ctx); err != nil {
			errs = append(errs, s.srv.Close())
		}
		<-s.done
		if id, err := statID(s.path); err == nil && id == s.ino {
			if err := os.Remove(s.path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
		}
		s.err = errors.Join(errs...)
	})
	return s.err
}

// clearStale makes room for the socket at path: nothing is there, or a socket
// nobody listens on, which it removes.
func clearStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("status socket: %w", err)
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("status socket: %s exists and is not a socket (%s); not replacing it", path, fi.Mode().Type())
	}
	c, err := net.DialTimeout("unix", path, probeTimeout)
	switch {
	case err == nil:
		c.Close()
		return fmt.Errorf("another agent is serving %s", path)
	case errors.Is(err, syscall.ECONNREFUSED):
		// Nobody listens: the socket of an agent that died.
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("status socket: remove the stale %s: %w", path, err)
		}
		return nil
	case errors.Is(err, syscall.EAGAIN):
		// The listener's backlog is full: someone is there.
		return fmt.Errorf("another agent is serving %s (busy)", path)
	default:
		return fmt.Errorf("status socket: %s exists and cannot be probed: %w", path, err)
	}
}

// listen binds the socket under a temporary name, sets its mode to 0600 and
// moves it to path: no client ever finds it with looser permissions. The
// caller holds the directory's lock and has made room at path.
func listen(path string) (net.Listener, fileID, error) {
	tmp := filepath.Join(filepath.Dir(path), "."+strconv.Itoa(os.Getpid())+".sock")
	os.Remove(tmp) // left by a killed process with our pid; ours under the lock
	ln, err := net.Listen("unix", tmp)
	if err != nil {
		return nil, fileID{}, err
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false) // Close removes path itself
	fail := func(err error) (net.Listener, fileID, error) {
		ln.Close()
		os.Remove(tmp)
		return nil, fileID{}, err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fail(err)
	}
	id, err := statID(path)
	if err != nil {
		ln.Close()
		os.Remove(path)
		return nil, fileID{}, err
	}
	return ln, id, nil
}

func statID(path string) (fileID, error) {
	var st unix.Stat_t
	if err := unix.Lstat(path, &st); err != nil {
		return fileID{}, err
	}
	return fileID{uint64(st.Dev), st.Ino}, nil
}

// lockDir takes an exclusive flock on dir, held until unlock.
func lockDir(dir string) (unlock func(), err error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, err
	}
	for {
		err = unix.Flock(int(f.Fd()), unix.LOCK_EX)
		if !errors.Is(err, unix.EINTR) {
			break
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", dir, err)
	}
	return func() { f.Close() }, nil
}

// errorLog hands net/http's complaints (bad requests, timeouts) to the logger.
func errorLog(l zerolog.Logger) *log.Logger {
	return log.New(logWriter{l}, "", 0)
}

type logWriter struct{ l zerolog.Logger }

func (w logWriter) Write(p []byte) (int, error) {
	w.l.Warn().Msg(strings.TrimSpace(string(p)))
	return len(p), nil
}

// Fetch gets the status served on the unix socket path and decodes its JSON
// into v (a *json.RawMessage keeps it as received). A ctx with no deadline is
// bounded at 10 s. Its errors say why no status came: no socket (no agent
// running here), a stale socket, or a socket only root may use.
func Fetch(ctx context.Context, path string, v any) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, fetchTimeout)
		defer cancel()
	}
	tr := &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		},
		DisableKeepAlives: true,
	}
	defer tr.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://lvwatch/status", nil)
	if err != nil {
		return err
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		return dialError(path, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("the agent on %s answered %s: %s", path, resp.Status, strings.TrimSpace(string(body)))
	}
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("decode the status from %s: %w", path, err)
	}
	return nil
}

// dialError explains a failed exchange with the socket at path.
func dialError(path string, err error) error {
	switch {
	case errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("no agent running here (%s does not exist)", path)
	case errors.Is(err, syscall.ECONNREFUSED):
		// connect(2) also refuses a path that is not a socket.
		if fi, serr := os.Stat(path); serr == nil && fi.Mode().Type() != fs.ModeSocket {
			return fmt.Errorf("%s is not a socket (%s): no agent serves there", path, fi.Mode().Type())
		}
		return fmt.Errorf("no agent answers on %s (stale socket)", path)
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return fmt.Errorf("permission denied on %s: the agent's socket is root's only (mode 0600); run as root", path)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("the agent on %s did not answer in time: %w", path, err)
	}
	return fmt.Errorf("status from %s: %w", path, err)
}
