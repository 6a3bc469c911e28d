package watch

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// What lvwatch pins on a host, for an operator to see and remove (lvwatch
// doctor): a pin directory per user of the watcher (the agent's DefaultPinDir,
// lvwatch watch's and demo's, tests'), each with the maps and the link that
// keeps the program attached while no process runs.

// Pins is what one pin directory holds.
type Pins struct {
	Dir string `json:"dir"`
	// Locked means a live Watcher holds the directory: its process reads the
	// events. Holders are the processes that have it open.
	Locked  bool        `json:"locked"`
	Holders []Holder    `json:"holders"`
	Link    *PinnedLink `json:"link"` // nil when no link is pinned
	Maps    []PinnedMap `json:"maps"`
	// Armings counts the devices in lvw_watch, Armed those of them still
	// armed (cookies in lvw_armed); both -1 when the map is not pinned.
	Armings int      `json:"armings"`
	Armed   int      `json:"armed"`
	Other   []string `json:"other,omitempty"` // files that are none of the watcher's pins
}

// PinnedLink is a pinned link and the program it attaches.
type PinnedLink struct {
	ID          link.ID        `json:"id"`
	Type        string         `json:"type"`  // the kernel's link type: perf_event, raw_tracepoint, ...
	Probe       Probe          `json:"probe"` // which probe the program is, by its type; "" if neither
	Program     string         `json:"program"`
	ProgramID   ebpf.ProgramID `json:"program_id"`
	ProgramType string         `json:"program_type"`
	Tracepoint  string         `json:"tracepoint,omitempty"` // what it is attached to, where the kernel tells (perf links: 6.6 on)
}

// PinnedMap is a pinned map.
type PinnedMap struct {
	Name string     `json:"name"`
	ID   ebpf.MapID `json:"id"`
	Type string     `json:"type"`
}

// Holder is a process that holds a pin directory or a link.
type Holder struct {
	PID     int    `json:"pid"`
	Command string `json:"command"` // its command line
}

// LooseLink is an attached link of an lvw_ program that no pin directory
// holds: a running process's (a watcher on a kernel that cannot pin its link,
// a test) or pinned somewhere else.
type LooseLink struct {
	PinnedLink
	Holders []Holder `json:"holders"`
}

// PinDirs lists lvwatch's pin directories on this host: DefaultPinDir and its
// siblings named lvwatch-*, in name order.
func PinDirs() ([]string, error) {
	entries, err := os.ReadDir(bpfFSPath)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", bpfFSPath, err)
	}
	base := filepath.Base(DefaultPinDir)
	var dirs []string
	for _, e := range entries {
		if e.IsDir() && (e.Name() == base || strings.HasPrefix(e.Name(), base+"-")) {
			dirs = append(dirs, filepath.Join(bpfFSPath, e.Name()))
		}
	}
	return dirs, nil
}

// InspectPins reports what dir holds. holders is what FindHolders found.
func InspectPins(dir string, holders Holders) (Pins, error) {
	p := Pins{Dir: dir, Holders: holders.dirs[dir], Armings: -1, Armed: -1}
	lock, err := tryLock(dir)
	if err != nil && !errors.Is(err, ErrBusy) {
		return p, err
	}
	p.Locked = errors.Is(err, ErrBusy)
	lock.Close()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return p, fmt.Errorf("list %s: %w", dir, err)
	}
	for _, e := range entries {
		path := filepath.Join(dir, e.Name())
		switch {
		case e.Name() == linkPin:
			if p.Link, err = inspectLink(path); err != nil {
				return p, err
			}
		case strings.HasPrefix(e.Name(), "lvw_"): // the maps: BPF objects are named lvw_*
			m, count, err := inspectMap(path, e.Name())
			if err != nil {
				return p, err
			}
			p.Maps = append(p.Maps, m)
			switch e.Name() {
			case bpfMapLvwWatch:
				p.Armings = count
			case bpfMapLvwArmed:
				p.Armed = count
			}
		default:
			p.Other = append(p.Other, e.Name())
		}
	}
	return p, nil
}

func inspectLink(path string) (*PinnedLink, error) {
	l, err := link.LoadPinnedLink(path, nil)
	if err != nil {
		return nil, fmt.Errorf("load pinned link %s: %w", path, err)
	}
	defer l.Close()
	info, err := l.Info()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return describeLink(info)
}

// describeLink names a link's type, its program and what it is attached to.
func describeLink(info *link.Info) (*PinnedLink, error) {
	pl := &PinnedLink{ID: info.ID, ProgramID: info.Program, Type: linkTypeName(info.Type)}
	if rt := info.RawTracepoint(); rt != nil {
		pl.Tracepoint = rt.Name
	}
	if pe := info.PerfEvent(); pe != nil && pe.Tracepoint() != nil {
		pl.Tracepoint = pe.Tracepoint().Tracepoint
	}
	prog, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		return nil, fmt.Errorf("program %d of link %d: %w", info.Program, info.ID, err)
	}
	defer prog.Close()
	pinfo, err := prog.Info()
	if err != nil {
		return nil, fmt.Errorf("program %d of link %d: %w", info.Program, info.ID, err)
	}
	pl.Program, pl.ProgramType = pinfo.Name, pinfo.Type.String()
	switch pinfo.Type {
	case ebpf.Tracing:
		pl.Probe = ProbeBTF
	case ebpf.TracePoint:
		pl.Probe = ProbeTracepoint
	}
	return pl, nil
}

func linkTypeName(t link.Type) string {
	switch t {
	case link.PerfEventType:
		return "perf_event"
	case link.RawTracepointType:
		return "raw_tracepoint"
	case link.TracingType:
		return "tracing"
	}
	return fmt.Sprintf("type %d", t)
}

// inspectMap describes a pinned map and counts its keys (for the hash maps).
func inspectMap(path, name string) (PinnedMap, int, error) {
	m, err := ebpf.LoadPinnedMap(path, nil)
	if err != nil {
		return PinnedMap{}, 0, fmt.Errorf("load pinned map %s: %w", path, err)
	}
	defer m.Close()
	info, err := m.Info()
	if err != nil {
		return PinnedMap{}, 0, fmt.Errorf("%s: %w", path, err)
	}
	id, _ := info.ID()
	pm := PinnedMap{Name: name, ID: id, Type: m.Type().String()}
	if m.Type() != ebpf.Hash {
		return pm, 0, nil
	}
	var key, value []byte
	count := 0
	it := m.Iterate()
	for it.Next(&key, &value) {
		count++
	}
	if err := it.Err(); err != nil {
		return pm, 0, fmt.Errorf("read %s: %w", path, err)
	}
	return pm, count, nil
}

// LooseLinks lists the attached links of lvw_ programs that are not among
// pinned, the IDs of the pinned links.
func LooseLinks(pinned []link.ID, holders Holders) ([]LooseLink, error) {
	var loose []LooseLink
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		if slices.Contains(pinned, it.ID) {
			continue
		}
		info, err := it.Link.Info()
		if err != nil {
			return nil, fmt.Errorf("link %d: %w", it.ID, err)
		}
		pl, err := describeLink(info)
		if errors.Is(err, os.ErrNotExist) {
			continue // detached meanwhile
		}
		if err != nil {
			return nil, err
		}
		if strings.HasPrefix(pl.Program, "lvw_") {
			loose = append(loose, LooseLink{PinnedLink: *pl, Holders: holders.links[pl.ID]})
		}
	}
	return loose, it.Err()
}

// RemovePins detaches the program and removes every pin of dir, and dir. It
// refuses (ErrBusy) while a Watcher holds dir, and holds dir's lock meanwhile,
// so that no Watcher opens it half removed.
func RemovePins(dir string) error {
	lock, err := tryLock(dir)
	if err != nil {
		return err
	}
	defer lock.Close()
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list %s: %w", dir, err)
	}
	for _, e := range entries {
		// Removing a pin drops its reference: the link detaches with the last one.
		if err := os.Remove(filepath.Join(dir, e.Name())); err != nil {
			return fmt.Errorf("unpin: %w", err)
		}
	}
	if err := os.Remove(dir); err != nil {
		return fmt.Errorf("remove pin directory: %w", err)
	}
	return nil
}

// tryLock takes dir's lock as a Watcher does, or reports ErrBusy.
func tryLock(dir string) (*os.File, error) {
	f, err := os.Open(dir)
	if err != nil {
		return nil, fmt.Errorf("open pin directory: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w (%s is locked)", ErrBusy, dir)
		}
		return nil, fmt.Errorf("lock pin directory: %w", err)
	}
	return f, nil
}

// Holders are the processes that hold lvwatch's pin directories (a Watcher
// keeps its own open) and BPF links open, from /proc.
type Holders struct {
	dirs  map[string][]Holder
	links map[link.ID][]Holder
}

// FindHolders scans /proc for processes, other than this one, with a pin
// directory of lvwatch or a BPF link open.
func FindHolders() (Holders, error) {
	h := Holders{dirs: map[string][]Holder{}, links: map[link.ID][]Holder{}}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return h, fmt.Errorf("list /proc: %w", err)
	}
	prefix := filepath.Join(bpfFSPath, filepath.Base(DefaultPinDir))
	for _, proc := range procs {
		pid, err := strconv.Atoi(proc.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		fdDir := filepath.Join("/proc", proc.Name(), "fd")
		fds, err := os.ReadDir(fdDir)
		if err != nil {
			continue // gone, or a kernel thread
		}
		var holder *Holder
		who := func() Holder {
			if holder == nil {
				holder = &Holder{PID: pid, Command: commandLine(pid)}
			}
			return *holder
		}
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join(fdDir, fd.Name()))
			switch {
			case err != nil:
			case strings.HasPrefix(target, prefix):
				h.dirs[target] = append(h.dirs[target], who())
			case target == "anon_inode:bpf_link":
				if id, ok := fdLinkID(filepath.Join("/proc", proc.Name(), "fdinfo", fd.Name())); ok {
					h.links[id] = append(h.links[id], who())
				}
			}
		}
	}
	return h, nil
}

// fdLinkID reads the link_id line of a BPF link's fdinfo.
func fdLinkID(path string) (link.ID, bool) {
	f, err := os.Open(path)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if value, ok := strings.CutPrefix(sc.Text(), "link_id:"); ok {
			id, err := strconv.ParseUint(strings.TrimSpace(value), 10, 32)
			return link.ID(id), err == nil
		}
	}
	return 0, false
}

// commandLine is a process's command line, its arguments joined by spaces.
func commandLine(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return "?"
	}
	return strings.Join(strings.FieldsFunc(string(b), func(r rune) bool { return r == 0 }), " ")
}
