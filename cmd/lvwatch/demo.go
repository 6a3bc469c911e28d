package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"time"

	"github.com/lvwatch/lvwatch/internal/loopdev"
	"github.com/lvwatch/lvwatch/internal/size"
	"github.com/lvwatch/lvwatch/internal/watch"
)

// The demo's embedded default: a 256 MiB loop device filled by dd in 32 MiB chunks,
// the way a VM fills a thin LV that is grown one chunk at a time.
const (
	demoSize  = 256 << 20
	demoChunk = 32 << 20
)

func runDemo(ctx context.Context, args []string) error {
	fs := newFlagSet("demo")
	devSize := fs.String("size", size.Format(demoSize), "size of the loop device")
	chunk := fs.String("chunk", size.Format(demoChunk), "how far the threshold moves at each crossing")
	pinDir := fs.String("pin-dir", watch.DefaultPinDir+"-demo", "where the demo pins its BPF objects (removed at exit)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	total, err := size.Parse(*devSize)
	if err != nil {
		return fmt.Errorf("%w: --size: %v", errUsage, err)
	}
	step, err := size.Parse(*chunk)
	if err != nil {
		return fmt.Errorf("%w: --chunk: %v", errUsage, err)
	}
	if step < 1<<20 || step%(1<<20) != 0 || total < 2*step {
		return fmt.Errorf("%w: --chunk must be whole MiB and --size at least two chunks", errUsage)
	}

	dev, err := loopdev.NewSparse("", int64(total))
	if err != nil {
		return err
	}
	defer dev.Close()
	w, err := watch.Open(watch.Options{PinDir: *pinDir, Logger: logger})
	if err != nil {
		return err
	}
	defer w.CloseAndUnpin()

	d := watch.Dev{Major: dev.Major, Minor: dev.Minor}
	paths := map[watch.Dev]string{d: dev.Path}
	logger.Info().Str("device", dev.Path).Str("size", size.Format(total)).Str("chunk", size.Format(step)).
		Msg("demo: dd fills the device chunk by chunk with O_DIRECT; each crossing prints a line and moves the threshold one chunk on")
	enc := json.NewEncoder(os.Stdout)
	crossings := 0
	// The first chunk crosses nothing; each later chunk's first write crosses.
	if err := fill(ctx, dev.Path, 0, step).Wait(); err != nil {
		return err
	}
	for threshold := step; threshold < total; threshold += step {
		if a, err := w.Arm(d, threshold); err != nil {
			return err
		} else if a.Past {
			return fmt.Errorf("another writer went past %s on %s (up to %s) before dd", size.Format(threshold), dev.Path, size.Format(a.High))
		}
		writer := fill(ctx, dev.Path, threshold, step)
		readCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		ev, err := w.Read(readCtx)
		cancel()
		if werr := writer.Wait(); werr != nil {
			return werr
		}
		if err != nil {
			return fmt.Errorf("no event for the crossing of %s: %w", size.Format(threshold), err)
		}
		if err := enc.Encode(newEventRecord(ev, paths)); err != nil {
			return fmt.Errorf("print event: %w", err)
		}
		crossings++
	}
	c, err := w.Counters()
	if err != nil {
		return err
	}
	logger.Info().Int("crossings", crossings).Uint64("bios", c.Bios).Uint64("lost", c.Lost).Msg("demo done")
	return nil
}

// ddWriter is a running dd.
type ddWriter struct {
	cmd *exec.Cmd
	out bytes.Buffer
	err error // from starting it
}

// fill starts dd writing length bytes of zeros at offset of path with O_DIRECT.
func fill(ctx context.Context, path string, offset, length uint64) *ddWriter {
	const mib = 1 << 20
	w := &ddWriter{cmd: exec.CommandContext(ctx, "dd", "if=/dev/zero", "of="+path, "bs=1M", "oflag=direct", "conv=notrunc", "status=none",
		"seek="+strconv.FormatUint(offset/mib, 10), "count="+strconv.FormatUint(length/mib, 10))}
	w.cmd.Stdout, w.cmd.Stderr = &w.out, &w.out
	if err := w.cmd.Start(); err != nil {
		w.err = fmt.Errorf("start dd: %w", err)
	}
	return w
}

// Wait waits for dd to finish and reports how it went.
func (w *ddWriter) Wait() error {
	if w.err != nil {
		return w.err
	}
	if err := w.cmd.Wait(); err != nil {
		return fmt.Errorf("dd: %w: %s", err, bytes.TrimSpace(w.out.Bytes()))
	}
	return nil
}
