package statusd

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

type snap struct {
	Host  int      `json:"host"`
	Calls int64    `json:"calls"`
	Names []string `json:"names"`
}

// serve starts a server of a snapshot counting its calls, closed at cleanup.
func serve(t *testing.T, path string) *Server {
	t.Helper()
	var calls atomic.Int64
	s, err := Serve(path, func() any { return snap{Host: 7, Calls: calls.Add(1), Names: []string{"a", "b"}} }, zerolog.Nop())
	if err != nil {
		t.Fatalf("Serve: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func fetch(t *testing.T, path string) (snap, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got snap
	err := Fetch(ctx, path, &got)
	return got, err
}

// get does a raw request over the socket.
func get(t *testing.T, path, method, url string) *http.Response {
	t.Helper()
	c := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}, Timeout: 10 * time.Second}
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	return resp
}

func TestServeFetch(t *testing.T) {
	path := filepath.Join(t.TempDir(), "run", "lvwatch.sock") // the directory is created
	s := serve(t, path)
	if s.Path() != path {
		t.Errorf("Path() = %q", s.Path())
	}
	for i := int64(1); i <= 2; i++ {
		got, err := fetch(t, path)
		if err != nil {
			t.Fatalf("Fetch: %v", err)
		}
		if got.Host != 7 || got.Calls != i || len(got.Names) != 2 {
			t.Errorf("fetch %d: %+v", i, got)
		}
	}
	fi, err := os.Lstat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Type() != fs.ModeSocket || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want a socket of mode 0600", fi.Mode())
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".*")); len(left) != 0 {
		t.Errorf("temporary files left: %v", left)
	}

	resp := get(t, path, http.MethodGet, "http://x/status")
	body, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q", ct)
	}
	if !strings.Contains(string(body), "\n  \"host\": 7,\n") || !strings.HasSuffix(string(body), "}\n") {
		t.Errorf("body is not indented JSON ending in a newline:\n%s", body)
	}
	var raw json.RawMessage
	if err := Fetch(context.Background(), path, &raw); err != nil || !json.Valid(raw) {
		t.Errorf("Fetch into a RawMessage: %v, %s", err, raw)
	}
	for _, tc := range []struct {
		method, url string
		code        int
	}{
		{http.MethodGet, "http://x/", http.StatusNotFound},
		{http.MethodGet, "http://x/status/more", http.StatusNotFound},
		{http.MethodGet, "http://x/debug/pprof/", http.StatusNotFound},
		{http.MethodPost, "http://x/status", http.StatusMethodNotAllowed},
	} {
		if resp := get(t, path, tc.method, tc.url); resp.StatusCode != tc.code {
			t.Errorf("%s %s: %s, want %d", tc.method, tc.url, resp.Status, tc.code)
		}
	}
}

func TestServeRefusesLiveAgent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lvwatch.sock")
	serve(t, path)
	s, err := Serve(path, func() any { return nil }, zerolog.Nop())
	if err == nil {
		s.Close()
		t.Fatal("a second Serve on a live socket succeeded")
	}
	if want := "another agent is serving " + path; err.Error() != want {
		t.Errorf("second Serve: %q, want %q", err, want)
	}
	if got, err := fetch(t, path); err != nil || got.Host != 7 {
		t.Errorf("the first server after the refused one: %+v, %v", got, err)
	}
}

// staleSocket leaves a socket file at path that nobody listens on, as an agent
// killed with SIGKILL does.
func staleSocket(t *testing.T, path string) {
	t.Helper()
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln.(*net.UnixListener).SetUnlinkOnClose(false)
	ln.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != fs.ModeSocket {
		t.Fatalf("no stale socket left: %v", err)
	}
}

func TestServeReplacesStaleSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lvwatch.sock")
	staleSocket(t, path)
	if _, err := fetch(t, path); err == nil || err.Error() != "no agent answers on "+path+" (stale socket)" {
		t.Errorf("Fetch on a stale socket: %v", err)
	}
	serve(t, path)
	if got, err := fetch(t, path); err != nil || got.Host != 7 {
		t.Errorf("Fetch after replacing the stale socket: %+v, %v", got, err)
	}
}

func TestServeRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lvwatch.sock")
	if err := os.WriteFile(path, []byte("keep me"), 0o644); err != nil {
		t.Fatal(err)
	}
	if s, err := Serve(path, func() any { return nil }, zerolog.Nop()); err == nil {
		s.Close()
		t.Fatal("Serve replaced a regular file")
	} else if !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Serve on a regular file: %v", err)
	}
	if b, err := os.ReadFile(path); err != nil || string(b) != "keep me" {
		t.Errorf("the file was changed: %q, %v", b, err)
	}
	if _, err := fetch(t, path); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Errorf("Fetch on a regular file: %v", err)
	}
}

func TestFetchNoAgent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lvwatch.sock")
	_, err := fetch(t, path)
	if want := "no agent running here (" + path + " does not exist)"; err == nil || err.Error() != want {
		t.Errorf("Fetch on a missing socket: %v, want %q", err, want)
	}
	// Missing directory too.
	path = filepath.Join(t.TempDir(), "no", "such", "dir", "lvwatch.sock")
	if _, err := fetch(t, path); err == nil || !strings.HasPrefix(err.Error(), "no agent running here") {
		t.Errorf("Fetch in a missing directory: %v", err)
	}
}

func TestCloseRemovesSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lvwatch.sock")
	s := serve(t, path)
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if _, err := os.Lstat(path); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("the socket after Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := fetch(t, path); err == nil || !strings.HasPrefix(err.Error(), "no agent running here") {
		t.Errorf("Fetch after Close: %v", err)
	}
	// A new server takes the path again.
	serve(t, path)
	if _, err := fetch(t, path); err != nil {
		t.Errorf("Fetch from the next server: %v", err)
	}
}

// Close leaves alone a socket that is no longer its own.
func TestCloseKeepsAnotherSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lvwatch.sock")
	s := serve(t, path)
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	staleSocket(t, path)
	s.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Errorf("Close removed a socket it did not create: %v", err)
	}
}

// Concurrent Serves on one stale path: exactly one wins.
func TestServeRace(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lvwatch.sock")
	staleSocket(t, path)
	const n = 8
	type result struct {
		s   *Server
		err error
	}
	results := make(chan result, n)
	for range n {
		go func() {
			s, err := Serve(path, func() any { return snap{Host: 1} }, zerolog.Nop())
			results <- result{s, err}
		}()
	}
	won := 0
	for range n {
		r := <-results
		if r.err == nil {
			won++
			t.Cleanup(func() { r.s.Close() })
		} else if !strings.HasPrefix(r.err.Error(), "another agent is serving") {
			t.Errorf("a losing Serve: %v", r.err)
		}
	}
	if won != 1 {
		t.Errorf("%d of %d concurrent Serves won, want 1", won, n)
	}
	if got, err := fetch(t, path); err != nil || got.Host != 1 {
		t.Errorf("Fetch: %+v, %v", got, err)
	}
}

func TestDialErrors(t *testing.T) {
	const path = "/run/lvwatch/lvwatch.sock"
	op := func(errno syscall.Errno) error {
		return &net.OpError{Op: "dial", Net: "unix", Err: os.NewSyscallError("connect", errno)}
	}
	for errno, want := range map[syscall.Errno]string{
		syscall.ENOENT: "no agent running here (/run/lvwatch/lvwatch.sock does not exist)",
		syscall.EACCES: "permission denied on /run/lvwatch/lvwatch.sock: the agent's socket is root's only (mode 0600); run as root",
	} {
		if got := dialError(path, op(errno)).Error(); got != want {
			t.Errorf("%v: %q, want %q", errno, got, want)
		}
	}
}

// A snapshot that cannot be encoded is a 500 with the reason, not a dead socket.
func TestServeEncodeError(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lvwatch.sock")
	s, err := Serve(path, func() any { return func() {} }, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var v any
	if err := Fetch(context.Background(), path, &v); err == nil || !strings.Contains(err.Error(), "500") {
		t.Errorf("Fetch of an unencodable snapshot: %v", err)
	}
}

// A user other than root is told the socket is root's: the test binary runs
// itself again as nobody against a socket served here.
func TestFetchPermissionDenied(t *testing.T) {
	if path := os.Getenv("STATUSD_TEST_FETCH"); path != "" {
		var v any
		err := Fetch(context.Background(), path, &v)
		os.Stdout.WriteString(fmt.Sprint(err))
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root, to serve as root and fetch as nobody")
	}
	dir := t.TempDir()
	for _, d := range []string{filepath.Dir(dir), dir} { // reachable, but the socket is 0600
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	path := filepath.Join(dir, "lvwatch.sock")
	serve(t, path)
	bin := filepath.Join(dir, "statusd.test") // the build directory may be root's only
	self, err := os.ReadFile("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, self, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestFetchPermissionDenied$")
	cmd.Env = append(os.Environ(), "STATUSD_TEST_FETCH="+path)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("the test binary as nobody: %v\n%s", err, out)
	}
	if want := "permission denied on " + path; !strings.Contains(string(out), want) || !strings.Contains(string(out), "run as root") {
		t.Errorf("Fetch as nobody: %s, want %q and a hint at root", out, want)
	}
}
