package resume

import (
	"context"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/lvwatch/lvwatch/internal/qmp"
)

// Monitors reaches VMs through QMP monitors of lvwatch's own: sockets that the
// VMs were started with for lvwatch alone (QEMU's -qmp
// unix:/run/lvwatch/qmp/NAME.sock,server=on,wait=off), found by Patterns
// (globs). Unlike a VM's main monitor, which its manager uses and QMP only
// visits, each is held open: QEMU's BLOCK_IO_ERROR reaches the agent as a
// write fails, and the VMs are asked through the connections held. Use it
// through the pointer NewMonitors returns.
type Monitors struct {
	patterns []string
	not      []string // globs of sockets never held: the VMs' main monitors

	mu   sync.Mutex
	held map[string]*qmp.Conn // by socket path
}

// NewMonitors returns the source of the monitors that patterns find, but for
// sockets that a glob of not matches: those of QMP, which a VM's manager uses
// (held, Proxmox's qm would wait for good).
func NewMonitors(patterns, not []string) *Monitors {
	return &Monitors{patterns: patterns, not: not, held: map[string]*qmp.Conn{}}
}

func (m *Monitors) String() string { return "qmp monitors " + strings.Join(m.patterns, ",") }

// Visit asks each VM through its monitor held, or one connected for the visit
// (a VM started since WatchPauses last looked, or no WatchPauses running).
func (m *Monitors) Visit(ctx context.Context, fn func(Machine)) error {
	return visitSockets(ctx, m.patterns, m.not, m.conn, fn)
}

func (m *Monitors) conn(path string) *qmp.Conn {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.held[path]
}

// monitorScan is how often WatchPauses looks for the monitors of VMs started
// since: a glob of a directory, no connection to a monitor held already.
const monitorScan = 2 * time.Second

// WatchPauses holds every monitor the patterns find, now and as VMs start, and
// calls fn with a drive's host path when QEMU reports that a write to it failed
// for want of space. It runs until ctx ends.
func (m *Monitors) WatchPauses(ctx context.Context, fn func(path string)) error {
	var wg sync.WaitGroup
	defer wg.Wait()
	defer m.release()
	for {
		for _, path := range m.unheld() {
			dctx, cancel := context.WithTimeout(ctx, monitorTimeout)
			c, err := qmp.Dial(dctx, path)
			cancel()
			if err != nil {
				continue // gone, or busy: the next scan tries again
			}
			m.mu.Lock()
			taken := m.held[path] != nil // by another WatchPauses of m
			if !taken {
				m.held[path] = c
			}
			m.mu.Unlock()
			if taken {
				c.Close()
				continue
			}
			wg.Go(func() { m.follow(ctx, path, c, fn) })
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(monitorScan):
		}
	}
}

// unheld is the sockets the patterns find that no connection holds, each once,
// but for those of not.
func (m *Monitors) unheld() []string {
	var paths []string
	for _, pattern := range m.patterns {
		found, _, _ := sockets(pattern) // a bad pattern finds nothing; Visit says why
		m.mu.Lock()
		for _, path := range found {
			if m.held[path] == nil && !slices.Contains(paths, path) && !matchesAny(m.not, path) {
				paths = append(paths, path)
			}
		}
		m.mu.Unlock()
	}
	return paths
}

func matchesAny(globs []string, path string) bool {
	return slices.ContainsFunc(globs, func(glob string) bool {
		ok, _ := filepath.Match(glob, path)
		return ok
	})
}

// follow reads c's events until the connection ends (the VM is gone, or
// release closed it), and then lets go of it.
func (m *Monitors) follow(ctx context.Context, path string, c *qmp.Conn, fn func(string)) {
	defer func() {
		m.mu.Lock()
		if m.held[path] == c {
			delete(m.held, path)
		}
		m.mu.Unlock()
		c.Close()
	}()
	for ev := range c.Events() {
		if e, err := ev.BlockIOError(); err == nil && e.NoSpace {
			for _, p := range noSpaceDrives(ctx, c) {
				fn(p)
			}
		}
	}
}

// A query after an ENOSPC that fails is tried again after 1 s, 4 times more:
// the pause is told only once.
const (
	queryTries = 5
	queryRetry = time.Second
)

// noSpaceDrives is the host paths of the VM's drives whose io-status is
// nospace; none when QEMU does not answer.
func noSpaceDrives(ctx context.Context, c *qmp.Conn) []string {
	for range queryTries {
		if paths, err := queryNoSpace(ctx, c); err == nil {
			return paths
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(queryRetry):
		}
	}
	return nil
}

func queryNoSpace(ctx context.Context, c *qmp.Conn) ([]string, error) {
	ctx, cancel := context.WithTimeout(ctx, monitorTimeout)
	defer cancel()
	blocks, err := c.QueryBlock(ctx)
	if err != nil {
		return nil, fmt.Errorf("query-block: %w", err)
	}
	var paths []string
	for _, b := range blocks {
		if b.Inserted != nil && b.IOStatus == qmp.IOStatusNoSpace {
			paths = append(paths, hostPath(b.Inserted.File))
		}
	}
	return paths, nil
}

// release closes every connection held.
func (m *Monitors) release() {
	m.mu.Lock()
	conns := make([]*qmp.Conn, 0, len(m.held))
	for _, c := range m.held {
		conns = append(conns, c)
	}
	m.mu.Unlock()
	for _, c := range conns {
		c.Close()
	}
}
