package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/lvwatch/lvwatch/internal/size"
	"github.com/lvwatch/lvwatch/internal/watch"
)

// eventRecord is the JSON line printed for each crossing.
type eventRecord struct {
	Device    string  `json:"device,omitempty"` // path, when this process armed it
	Dev       string  `json:"dev"`              // major:minor
	Offset    uint64  `json:"offset"`
	Length    uint64  `json:"length"`
	Threshold uint64  `json:"threshold"`
	PID       uint32  `json:"pid"`
	Comm      string  `json:"comm"`
	LatencyUS float64 `json:"latency_us"` // write queued → event read
	Cookie    uint64  `json:"cookie"`
}

func newEventRecord(ev watch.Event, paths map[watch.Dev]string) eventRecord {
	return eventRecord{
		Device: paths[ev.Dev], Dev: ev.Dev.String(), Offset: ev.Offset, Length: ev.Length,
		Threshold: ev.Threshold, PID: ev.PID, Comm: ev.Comm,
		LatencyUS: float64(ev.Latency.Nanoseconds()) / 1e3, Cookie: ev.Cookie,
	}
}

// pastRecord is the JSON line printed when an arming finds writes already past
// its threshold: no crossing event will come for it.
type pastRecord struct {
	Device    string `json:"device,omitempty"`
	Dev       string `json:"dev"`
	Threshold uint64 `json:"threshold"`
	High      uint64 `json:"high"` // the highest write end seen
	Past      bool   `json:"past"`
	Cookie    uint64 `json:"cookie"`
}

func runWatch(ctx context.Context, args []string) error {
	fs := newFlagSet("watch")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: lvwatch watch --threshold SIZE [flags] DEVICE...\n\nPrints one JSON line per write that ends past SIZE on a DEVICE.")
		fs.PrintDefaults()
	}
	threshold := fs.String("threshold", "", "arm each device at this offset (32MiB, 1GiB, or bytes)")
	rearm := fs.Bool("rearm", false, "after each crossing arm the device again, --step further on")
	stepFlag := fs.String("step", "", "with --rearm, how far the threshold moves on (default: --threshold)")
	// Its own pins, removed at exit: a diagnostic run once must neither leave its
	// program attached (every bio on the host would pay for it) nor touch a
	// running agent's objects.
	pinDir := fs.String("pin-dir", watch.DefaultPinDir+"-watch", "where the BPF maps and link are pinned (not the agent's)")
	keep := fs.Bool("keep", false, "on exit keep the program attached and the pins, so that a run after it misses nothing (default: detach and remove them)")
	var probe watch.Probe
	fs.Func("probe", `how to attach: "tp_btf" (the BTF raw tracepoint) or "tracepoint" (the classic one, for comparison); default: tp_btf where the kernel has BTF`, func(s string) error {
		if probe = watch.Probe(s); probe != watch.ProbeBTF && probe != watch.ProbeTracepoint {
			return fmt.Errorf("want %q or %q", watch.ProbeBTF, watch.ProbeTracepoint)
		}
		return nil
	})
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if *threshold == "" || fs.NArg() == 0 {
		return fmt.Errorf("%w: --threshold and at least one DEVICE are required", errUsage)
	}
	thr, err := size.Parse(*threshold)
	if err != nil {
		return fmt.Errorf("%w: --threshold: %v", errUsage, err)
	}
	step := thr
	if *stepFlag != "" {
		if step, err = size.Parse(*stepFlag); err != nil {
			return fmt.Errorf("%w: --step: %v", errUsage, err)
		}
	}
	if *rearm && step < 512 {
		return fmt.Errorf("%w: --rearm needs a --step (or --threshold) of a sector or more", errUsage)
	}
	paths := map[watch.Dev]string{}
	for _, p := range fs.Args() {
		dev, err := watch.DevOf(p)
		if err != nil {
			return err
		}
		paths[dev] = p
	}

	w, err := watch.Open(watch.Options{PinDir: *pinDir, Logger: logger, Probe: probe})
	if err != nil {
		return err
	}
	p := &printer{w: w, enc: json.NewEncoder(os.Stdout), paths: paths, step: step, rearm: *rearm}
	for dev := range paths {
		past, err := p.arm(dev, thr)
		if err == nil {
			err = p.printPast(past)
		}
		if err != nil {
			w.Close()
			return err
		}
		logger.Info().Str("device", paths[dev]).Stringer("dev", dev).Uint64("threshold", thr).Int("past", len(past)).Msg("armed")
	}
	err = p.printEvents(ctx)
	if *keep {
		return errors.Join(err, w.Close())
	}
	return errors.Join(err, w.CloseAndUnpin())
}

// printer prints the crossings of the devices it armed, one JSON line each
// (one Write per line, and stdout is not buffered), and with rearm arms each
// device again a step further on, as the agent does after an extension.
type printer struct {
	w     *watch.Watcher
	enc   *json.Encoder
	paths map[watch.Dev]string
	step  uint64
	rearm bool
}

// arm arms dev at threshold. Writes may already have gone past it: then it
// prints that, and with rearm steps on until an arming is ahead of them.
func (p *printer) arm(dev watch.Dev, threshold uint64) ([]pastRecord, error) {
	var past []pastRecord
	for {
		a, err := p.w.Arm(dev, threshold)
		if err != nil {
			return past, err
		}
		logger.Debug().Str("device", p.paths[dev]).Stringer("dev", dev).Uint64("threshold", threshold).Uint64("cookie", a.Cookie).Bool("past", a.Past).Msg("armed")
		if !a.Past {
			return past, nil
		}
		past = append(past, pastRecord{Device: p.paths[dev], Dev: dev.String(), Threshold: threshold, High: a.High, Past: true, Cookie: a.Cookie})
		if !p.rearm {
			return past, nil
		}
		threshold = p.next(threshold, a.High)
	}
}

// next is the first threshold of the sequence threshold + k·step at or beyond end.
func (p *printer) next(threshold, end uint64) uint64 {
	if end < threshold {
		return threshold
	}
	return threshold + ((end-threshold)/p.step+1)*p.step
}

// printEvents prints each event once the device is armed again (with rearm: so a
// printed event has been handled), then the armings that found writes past them,
// until ctx ends, which is a clean exit once the events already read are printed.
func (p *printer) printEvents(ctx context.Context) error {
	for {
		ev, err := p.w.Read(ctx)
		if err != nil && ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		if _, ours := p.paths[ev.Dev]; !ours {
			continue // armed by another run on the same pins
		}
		var past []pastRecord
		if p.rearm {
			if past, err = p.arm(ev.Dev, p.next(ev.Threshold, ev.Offset+ev.Length)); err != nil {
				return err
			}
		}
		if err := p.print(newEventRecord(ev, p.paths)); err != nil {
			return err
		}
		if err := p.printPast(past); err != nil {
			return err
		}
	}
}

// print prints one JSON line.
func (p *printer) print(rec any) error {
	if err := p.enc.Encode(rec); err != nil {
		return fmt.Errorf("print: %w", err)
	}
	return nil
}

// printPast prints the armings that found writes past them.
func (p *printer) printPast(past []pastRecord) error {
	for _, rec := range past {
		if err := p.print(rec); err != nil {
			return err
		}
	}
	return nil
}
