package watch

import (
	"context"
	"os/exec"
	"runtime"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/lvwatch/lvwatch/internal/latency"
	"github.com/lvwatch/lvwatch/internal/testutil"
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

// BenchmarkProbeCost measures, in one run, what each probe costs every bio on
// the host: a bio on an unwatched device (a loop device on tmpfs, written with
// 4 KiB O_DIRECT pwrites; another device is armed, as on a host running VMs).
// This machine has no PMU and time deltas drown in the write's 10-20 µs, so a
// cpu-clock sampling profile of the writer thread (perf record, every 10 µs
// of its CPU time, with kernel call chains) attributes to the tracepoint the
// samples taken inside its probes (isProbeSample: the record the classic
// tracepoint fills, the BPF dispatch, the program): host-ns/bio is their
// count × the period / the writes. The modes: none (no lvwatch attached: what
// other tracers on the host cost), tracepoint and tp_btf (the watcher by each
// probe), and empty (an empty tp_btf program: the kernel's dispatch alone, the
// floor of any BTF probe). The machine is shared, so the modes alternate in
// short blocks under one profile, each sample going to the block it fell in,
// and a change of load falls on all modes alike. prog-ns/bio is the program's
// own run time from the kernel's BPF statistics, in passes after the profile:
// enabling them adds two clock reads to every run. b.N is the writes per mode,
// 50000 at least: at about one sample per write, fewer give few samples in the
// probes; -benchtime 100000x gives steadier figures.
func BenchmarkProbeCost(b *testing.B) {
	requireProbe(b, ProbeBTF)
	if _, err := exec.LookPath("perf"); err != nil {
		testutil.SkipOrFail(b, "perf not installed (make deps installs linux-perf)")
	}
	dev := newBlockDev(b, "/dev/shm", 64*mib)
	buf := alignedBuf(4096)
	// The profile follows this thread: the probe runs in the submitter's context.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	writes := func(n int) {
		for i := range n {
			dev.write(b, buf, int64(i%8192)*4096)
		}
	}
	spec, err := loadBpf()
	if err != nil {
		b.Fatal(err)
	}
	// attached runs f with mode's program attached (none for "none").
	attached := func(mode string, f func(prog *ebpf.Program)) {
		switch mode {
		case "none":
			f(nil)
		case "empty":
			prog, err := ebpf.NewProgram(spec.Programs[bpfProgLvwTestEmpty])
			if err != nil {
				b.Fatal(err)
			}
			defer prog.Close()
			l, err := link.AttachTracing(link.TracingOptions{Program: prog, AttachType: ebpf.AttachTraceRawTp})
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			f(prog)
		default:
			w := mustOpen(b, Options{PinDir: testPinDir(b) + "-" + mode, Probe: Probe(mode)})
			defer w.CloseAndUnpin()
			mustArm(b, w, fakeDev, 60*mib)
			f(w.objs.Prog)
		}
	}

	// b.N writes per mode, but never so few that the probes get no samples
	// (the default benchtime stops at b.N = 1, as one run takes seconds), in
	// blocks of 2500 or more.
	perMode := max(b.N, 50_000)
	blocks := min(40, perMode/2500)
	modes := []string{"none", string(ProbeTracepoint), string(ProbeBTF), "empty"}
	type window struct {
		mode     string
		from, to time.Duration
	}
	var windows []window
	b.ResetTimer()
	p := startThreadProfile(b, unix.Gettid())
	p.command(b, "enable")
	for block := range blocks {
		n := perMode*(block+1)/blocks - perMode*block/blocks
		for i := range modes {
			mode := modes[(i+block)%len(modes)]
			attached(mode, func(*ebpf.Program) {
				from := monotonicNow()
				writes(n)
				windows = append(windows, window{mode, from, monotonicNow()})
			})
		}
	}
	p.command(b, "disable")
	samples, probeSamples := map[string]int{}, map[string]int{}
	for _, s := range p.stop(b) {
		for _, w := range windows {
			if s.at >= w.from && s.at < w.to {
				samples[w.mode]++
				if s.probe {
					probeSamples[w.mode]++
				}
			}
		}
	}

	runTime, runs := map[string]time.Duration{}, map[string]uint64{}
	for _, mode := range modes[1:] {
		attached(mode, func(prog *ebpf.Program) {
			stats, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME))
			if err != nil {
				b.Fatalf("enable BPF run-time statistics: %v", err)
			}
			defer stats.Close()
			before := progStats(b, prog)
			writes(perMode)
			after := progStats(b, prog)
			runTime[mode], runs[mode] = after.Runtime-before.Runtime, after.RunCount-before.RunCount
		})
	}
	b.StopTimer()
	hostNs := func(mode string) float64 { return float64(probeSamples[mode]) * profilePeriod / float64(perMode) }
	for _, mode := range modes {
		b.Logf("%s: %d of %d samples in the probes, %d writes", mode, probeSamples[mode], samples[mode], perMode)
		b.ReportMetric(hostNs(mode), mode+"-host-ns/bio")
		if runs[mode] > 0 {
			b.ReportMetric(float64(runTime[mode])/float64(runs[mode]), mode+"-prog-ns/bio")
		}
	}
	if tracepoint := hostNs(string(ProbeTracepoint)); tracepoint > 0 {
		b.ReportMetric(hostNs(string(ProbeBTF))/tracepoint, "tp_btf/tracepoint")
	}
}
