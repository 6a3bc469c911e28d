package resume

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/lvwatch/lvwatch/internal/qmp"
	"github.com/lvwatch/lvwatch/internal/watch"
)

// DefaultQMP is where Proxmox VE keeps its VMs' monitors.
const DefaultQMP = "/run/qemu-server/*.qmp"

// monitorTimeout bounds one VM's connect and questions: a monitor another
// client holds does not answer until that client lets go.
const monitorTimeout = 5 * time.Second

// QMP reaches VMs through their QMP sockets: the paths matching Patterns (globs).
// A socket named outright must answer; one found by a pattern with nothing
// listening is a VM gone, and skipped.
type QMP struct {
	Patterns []string
}

func (q QMP) String() string { return "qmp " + strings.Join(q.Patterns, ",") }

// Visit connects to each socket in turn, for the length of fn only.
func (q QMP) Visit(ctx context.Context, fn func(Machine)) error {
	return visitSockets(ctx, q.Patterns, nil, nil, fn)
}

// visitSockets calls fn for the VM behind each socket that patterns name or
// find, but for those a glob of not matches: through the connection held
// returns for it, else one of its own, for the length of fn.
func visitSockets(ctx context.Context, patterns, not []string, held func(path string) *qmp.Conn, fn func(Machine)) error {
	for _, pattern := range patterns {
		paths, named, err := sockets(pattern)
		if err != nil {
			return err
		}
		for _, path := range paths {
			if matchesAny(not, path) {
				continue
			}
			m := &qmpMachine{path: path, named: named}
			if held != nil {
				m.conn = held(path)
			}
			if m.conn != nil {
				fn(m)
				continue
			}
			mctx, cancel := context.WithTimeout(ctx, monitorTimeout)
			m.conn, m.err = qmp.Dial(mctx, path)
			cancel()
			if m.err != nil && !named && gone(m.err) {
				continue
			}
			fn(m)
			if m.conn != nil {
				m.conn.Close()
			}
		}
	}
	return nil
}

// sockets is the paths pattern finds, or pattern itself when it names one
// (named: no glob).
func sockets(pattern string) (paths []string, named bool, err error) {
	if !strings.ContainsAny(pattern, `*?[\`) {
		return []string{pattern}, true, nil
	}
	if paths, err = filepath.Glob(pattern); err != nil {
		return nil, false, fmt.Errorf("pattern %q: %w", pattern, err)
	}
	return paths, false, nil
}

// gone reports a socket with no VM behind it.
func gone(err error) bool {
	return errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ENOENT)
}

type qmpMachine struct {
	path  string
	named bool
	conn  *qmp.Conn
	err   error
}

func (m *qmpMachine) Name() string { return m.path }
func (m *qmpMachine) Named() bool  { return m.named }

func (m *qmpMachine) State(ctx context.Context) (State, error) {
	if m.err != nil {
		return State{}, m.err
	}
	ctx, cancel := context.WithTimeout(ctx, monitorTimeout)
	defer cancel()
	status, err := m.conn.QueryStatus(ctx)
	if err != nil {
		return State{}, err
	}
	st := State{Status: status.Status, IOErrorPause: status.Status == qmp.StatusIOError}
	if !st.IOErrorPause {
		return st, nil // the one question a running VM costs
	}
	blocks, err := m.conn.QueryBlock(ctx)
	if err != nil {
		return State{}, err
	}
	stats, err := m.conn.QueryBlockstats(ctx)
	if err != nil {
		return State{}, err
	}
	for _, b := range blocks {
		if b.Inserted == nil {
			continue // an empty drive (a CD-ROM with no medium)
		}
		d := Drive{Name: driveName(b), Path: hostPath(b.Inserted.File),
			NoSpace: b.IOStatus == qmp.IOStatusNoSpace, OtherError: b.IOStatus == qmp.IOStatusFailed}
		d.Dev, _ = watch.DevOf(d.Path) // a file or a network disk stays zero
		d.Highest = highestWrite(stats, b)
		st.Drives = append(st.Drives, d)
	}
	return st, nil
}

func (m *qmpMachine) Resume(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, monitorTimeout)
	defer cancel()
	// cont returns once the VM runs; QEMU retries the failed writes then.
	return m.conn.Cont(ctx)
}

func driveName(b qmp.Block) string {
	if b.Device != "" {
		return b.Device
	}
	return b.QDev
}

// highestWrite is the end of the highest write to the drive's host file or
// device: that of the bottom node of its chain of parents (a filter, such as
// Proxmox's throttle node, then the format node, then the file or device),
// whose offsets are the device's.
func highestWrite(stats []qmp.Blockstats, b qmp.Block) uint64 {
	for _, s := range stats {
		if (b.Device == "" || s.Device != b.Device) && (b.QDev == "" || s.QDev != b.QDev) {
			continue
		}
		node := &s
		for node.Parent != nil {
			node = node.Parent
		}
		return node.Stats.WrHighestOffset
	}
	return 0
}

// hostPath is the file a drive's top image is on. QEMU names a node opened from
// options rather than a file name by a "json:{...}" pseudo-name; its file is
// file.filename in it.
func hostPath(name string) string {
	js, ok := strings.CutPrefix(name, "json:")
	if !ok {
		return name
	}
	var opts struct {
		File struct {
			Filename string `json:"filename"`
		} `json:"file"`
	}
	if json.Unmarshal([]byte(js), &opts) != nil || opts.File.Filename == "" {
		return name
	}
	return opts.File.Filename
}
