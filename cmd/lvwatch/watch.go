package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

func runWatch(ctx context.Context, args []string) error {
	fs := newFlagSet("watch")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: lvwatch watch --threshold SIZE [flags] DEVICE...\n\nPrints one JSON line per write that ends past SIZE on a DEVICE.")
		fs.PrintDefaults()
	}
	threshold := fs.String("threshold", "", "arm each device at this offset (32MiB, 1GiB, or bytes)")
	rearm := fs.Bool("rearm", false, "arm a device again after each crossing")
	pinDir := fs.String("pin-dir", watch.DefaultPinDir, "where the BPF maps and link are pinned")
	unpin := fs.Bool("unpin", false, "on exit detach the program and remove the pins (default: keep watching, so a restart misses nothing)")
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
	paths := map[watch.Dev]string{}
	for _, p := range fs.Args() {
		dev, err := watch.DevOf(p)
		if err != nil {
			return err
		}
		paths[dev] = p
	}

	w, err := watch.Open(watch.Options{PinDir: *pinDir, Logger: logger})
	if err != nil {
		return err
	}
	for dev, p := range paths {
		cookie, err := w.Arm(dev, thr)
		if err != nil {
			w.Close()
			return err
		}
		logger.Info().Str("device", p).Stringer("dev", dev).Uint64("threshold", thr).Uint64("cookie", cookie).Msg("armed")
	}
	err = printEvents(ctx, w, os.Stdout, paths, func(ev watch.Event) error {
		if _, ok := paths[ev.Dev]; !*rearm || !ok {
			return nil
		}
		_, err := w.Arm(ev.Dev, thr)
		return err
	})
	if *unpin {
		return errors.Join(err, w.CloseAndUnpin())
	}
	return errors.Join(err, w.Close())
}

// printEvents calls handle for each event and then prints it as a JSON line (so a
// printed event has been handled: with --rearm, the device is armed again), until
// ctx ends, which is a clean exit once the events already read are printed.
func printEvents(ctx context.Context, w *watch.Watcher, out io.Writer, paths map[watch.Dev]string, handle func(watch.Event) error) error {
	enc := json.NewEncoder(out) // one Write per line, and stdout is not buffered
	for {
		ev, err := w.Read(ctx)
		if err != nil && ctx.Err() != nil {
			return nil
		}
		if err != nil {
			return err
		}
		if err := handle(ev); err != nil {
			return err
		}
		if err := enc.Encode(newEventRecord(ev, paths)); err != nil {
			return fmt.Errorf("print event: %w", err)
		}
	}
}
