package watch

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/btf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Probe is how the program meets block:block_bio_queue. Both ways see the same
// bios and raise the same events.
type Probe string

const (
	// ProbeAuto picks ProbeBTF, or ProbeTracepoint where BTF is missing or the
	// BTF program cannot load or attach (logged with the reason).
	ProbeAuto Probe = ""
	// ProbeBTF is a BTF raw tracepoint (tp_btf) reading the bio itself by
	// CO-RE: the kernel fills no trace record for it, and the tracepoint's perf
	// users are untouched.
	ProbeBTF Probe = "tp_btf"
	// ProbeTracepoint is the classic tracepoint, reading the record the kernel
	// fills for it (perf_trace_block_bio, blk_fill_rwbs): every bio on the host
	// pays for that record, 1.3-1.7 times the BTF probe's cost as measured here
	// (BenchmarkProbeCost).
	ProbeTracepoint Probe = "tracepoint"
)

// program is the BPF program of each probe, in bpf/lvwatch.c.
func (p Probe) program() string {
	if p == ProbeBTF {
		return bpfProgLvwBioBtf
	}
	return bpfProgLvwBioQueue
}

// attachProbe attaches the program of the probe asked for (for ProbeAuto, the
// BTF one unless the kernel has no BTF or it fails, then the classic one,
// saying why) and moves the link pin to it. The old link, if any, is detached
// only once the new one is attached: for that instant both run (bios on watched
// devices count twice), and the disarm in lvw_armed keeps it at one event per
// crossing.
func (w *Watcher) attachProbe(spec *ebpf.CollectionSpec, probe Probe) error {
	if err := w.attachAny(spec, probe); err != nil {
		return err
	}
	w.log.Info().Str("probe", string(w.probe)).Str("program", w.probe.program()).Str("pins", w.pinDir).Msg("watching block_bio_queue")
	path := filepath.Join(w.pinDir, linkPin)
	if err := w.dropPinnedLink(path); err != nil {
		return err
	}
	if err := w.link.Pin(path); err != nil {
		// Kernels before 5.15 attach tracepoints without a pinnable link: the
		// program then stays attached only while this process runs.
		w.log.Warn().Err(err).Str("path", path).Msg("cannot pin the tracepoint link; writes are unwatched while no agent runs")
	}
	return nil
}

// attachAny attaches probe's program, or for ProbeAuto the first that works.
func (w *Watcher) attachAny(spec *ebpf.CollectionSpec, probe Probe) error {
	if probe != ProbeAuto {
		return w.attach(spec, probe)
	}
	if _, err := btf.LoadKernelSpec(); err != nil {
		w.log.Info().Err(err).Msg("the kernel has no BTF: watching with the classic tracepoint")
		return w.attach(spec, ProbeTracepoint)
	}
	btfErr := w.attach(spec, ProbeBTF)
	if btfErr == nil {
		return nil
	}
	w.log.Warn().Err(btfErr).Msg("cannot watch with the BTF raw tracepoint: falling back to the classic tracepoint, whose trace record every bio on the host pays for")
	if err := w.attach(spec, ProbeTracepoint); err != nil {
		return errors.Join(btfErr, err)
	}
	return nil
}

// attach loads probe's program on the watcher's maps and attaches it.
func (w *Watcher) attach(spec *ebpf.CollectionSpec, probe Probe) error {
	if probe == ProbeTracepoint {
		if err := checkTracepointFormat(); err != nil {
			return err
		}
	}
	prog, err := loadProgram(spec, probe.program(), w.objs.byName())
	if err != nil {
		return err
	}
	var l link.Link
	if probe == ProbeBTF {
		l, err = link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachTraceRawTp})
	} else {
		l, err = w.attachTracepoint(prog)
	}
	if err != nil {
		prog.Close()
		return fmt.Errorf("attach %s to block_bio_queue: %w", probe, err)
	}
	w.objs.Prog, w.link, w.probe = prog, l, probe
	return nil
}

// dropPinnedLink detaches the link a previous watcher pinned at path, if any.
func (w *Watcher) dropPinnedLink(path string) error {
	old, err := link.LoadPinnedLink(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("load pinned link %s: %w", path, err)
	}
	defer old.Close()
	if info, err := old.Info(); err == nil {
		w.log.Debug().Uint32("link", uint32(info.ID)).Uint32("program", uint32(info.Program)).Msg("detaching the previous watcher's link")
	}
	if err := old.Unpin(); err != nil {
		return fmt.Errorf("unpin previous link: %w", err)
	}
	return nil
}

// attachTracepoint attaches prog to block:block_bio_queue through a perf event
// that stays disabled: it only carries the program. An enabled one would also
// take a sample of every record the program lets through to perf users (it
// returns 1): a profile here found 60 % of the classic probe's time in that
// (perf_tp_event) on the event's CPU. Kernels before 5.15 have no perf links:
// there the program goes on an enabled event.
func (w *Watcher) attachTracepoint(prog *ebpf.Program) (link.Link, error) {
	id, err := tracepointID()
	if err != nil {
		return nil, err
	}
	attr := unix.PerfEventAttr{Type: unix.PERF_TYPE_TRACEPOINT, Config: id, Size: uint32(unsafe.Sizeof(unix.PerfEventAttr{})), Bits: unix.PerfBitDisabled}
	fd, err := unix.PerfEventOpen(&attr, -1, 0, -1, unix.PERF_FLAG_FD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("open a perf event on block:block_bio_queue: %w", err)
	}
	defer unix.Close(fd) // the link holds the event
	l, err := link.AttachRawLink(link.RawLinkOptions{Target: fd, Program: prog, Attach: ebpf.AttachPerfEvent})
	switch {
	case err == nil:
		return l, nil
	case !errors.Is(err, link.ErrNotSupported) && !errors.Is(err, unix.EINVAL):
		return nil, err
	}
	w.log.Warn().Err(err).Msg("no perf link for the tracepoint program (before Linux 5.15): attaching it to an enabled perf event, which every bio's record also reaches")
	return link.Tracepoint("block", "block_bio_queue", prog, nil)
}

// loadProgram loads the named program of spec on maps, the watcher's.
func loadProgram(spec *ebpf.CollectionSpec, name string, maps map[string]*ebpf.Map) (*ebpf.Program, error) {
	one := spec.Copy()
	one.Programs = map[string]*ebpf.ProgramSpec{name: spec.Programs[name]}
	coll, err := ebpf.NewCollectionWithOptions(one, ebpf.CollectionOptions{MapReplacements: maps})
	if err != nil {
		return nil, fmt.Errorf("load BPF program %s: %w", name, err)
	}
	defer coll.Close()
	return coll.DetachProgram(name), nil
}
