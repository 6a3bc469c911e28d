package watch

import (
	"context"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/lvwatch/lvwatch/internal/latency"
	"golang.org/x/sys/unix"
)

// BenchmarkDetectionLatency measures, per crossing, the time from just before the
// write syscall to the moment a reader goroutine blocked in Read has the event.
// Run with -benchtime 10000x for 10,000 crossings.
func BenchmarkDetectionLatency(b *testing.B) {
	w := openWatcher(b, ProbeAuto)
	dev := newBlockDev(b, "/dev/shm", 64*mib)
	buf := alignedBuf(4096)

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	type receipt struct {
		at     time.Duration
		kernel time.Duration // the event's own queue → read latency
	}
	received := make(chan receipt)
	go func() {
		for {
			ev, err := w.Read(ctx)
			if err != nil {
				return
			}
			received <- receipt{monotonicNow(), ev.Latency}
		}
	}()

	total := make([]time.Duration, 0, b.N)
	kernel := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	for range b.N {
		// Disarm forgets the last crossing's write, so the same threshold is not past.
		if _, err := w.Disarm(dev.Dev); err != nil {
			b.Fatal(err)
		}
		mustArm(b, w, dev.Dev, 8*mib)
		start := monotonicNow()
		dev.write(b, buf, 8*mib)
		select {
		case r := <-received:
			total = append(total, r.at-start)
			kernel = append(kernel, r.kernel)
		case <-time.After(5 * time.Second):
			b.Fatal("no event within 5s of a crossing")
		}
	}
	b.StopTimer()
	latency.Report(b, "write-to-reader", total, time.Microsecond)
	latency.Report(b, "queued-to-reader", kernel, time.Microsecond)
}

// BenchmarkBioCost measures the program's run time per bio from the kernel's BPF
// statistics: on a watched device below its threshold (the gate dismisses
// them), on one whose writes are past its threshold once it fired (the slow
// path, which keeps the high-water mark), and on an unwatched one. The loop
// devices sit on tmpfs, so no other bios run meanwhile.
func BenchmarkBioCost(b *testing.B) {
	for _, mode := range []string{"watched", "past", "unwatched"} {
		b.Run(mode, func(b *testing.B) {
			w := openWatcher(b, ProbeAuto)
			dev := newBlockDev(b, "/dev/shm", 64*mib)
			buf := alignedBuf(4096)
			switch mode {
			case "watched":
				mustArm(b, w, dev.Dev, 60*mib)
			case "past":
				mustArm(b, w, dev.Dev, 0)
				dev.write(b, buf, 0)
			}
			stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
			if err != nil {
				b.Fatalf("enable BPF run-time statistics: %v", err)
			}
			defer stats.Close()
			before := progStats(b, w.objs.Prog)
			b.ResetTimer()
			for i := range b.N {
				dev.write(b, buf, int64(i%8192)*4096)
			}
			b.StopTimer()
			after := progStats(b, w.objs.Prog)
			runs := after.RunCount - before.RunCount
			if runs < uint64(b.N) {
				b.Fatalf("program ran %d times for %d writes", runs, b.N)
			}
			b.ReportMetric(float64(after.Runtime-before.Runtime)/float64(runs), "ns/bio")
			b.ReportMetric(float64(runs)/float64(b.N), "bios/write")
		})
	}
}

func progStats(b *testing.B, p *ebpf.Program) *ebpf.ProgramStats {
	s, err := p.Stats()
	if err != nil {
		b.Fatalf("program statistics: %v", err)
	}
	return s
}
