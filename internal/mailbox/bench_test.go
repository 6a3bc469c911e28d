package mailbox

import (
	"context"
	"math/rand/v2"
	"path/filepath"
	"testing"
	"time"

	"github.com/lvwatch/lvwatch/internal/latency"
	"github.com/lvwatch/lvwatch/internal/loopdev"
	"github.com/lvwatch/lvwatch/internal/testutil"
)

// loopVolumes attaches two loop devices and zeroes them as an inbox and an outbox.
func loopVolumes(b testing.TB) (inbox, outbox string) {
	testutil.RequireRoot(b)
	testutil.RequireFile(b, "/dev/loop-control", "loop devices")
	dir := directDir(b)
	var paths [2]string
	for i := range paths {
		dev, err := loopdev.NewSparse(dir, 1<<20)
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(func() { dev.Close() })
		v, err := OpenVolume(dev.Path, VolumeOptions{})
		if err != nil {
			b.Fatal(err)
		}
		if err := v.Init(); err != nil {
			b.Fatal(err)
		}
		v.Close()
		paths[i] = dev.Path
	}
	return paths[0], paths[1]
}

// roundTrips sends n extend requests as host 1, each after a random pause in [0, gap)
// so that requests fall at random phases of the SPM's polling, and returns each one's
// time from the call to the granted reply.
func roundTrips(b *testing.B, h *Host, n int, gap time.Duration) []time.Duration {
	samples := make([]time.Duration, 0, n)
	for i := range n {
		time.Sleep(rand.N(gap))
		start := time.Now()
		size := uint64(1 + i)
		got, err := h.Extend(context.Background(), refDomain, refVolume, size)
		if err != nil || got != size {
			b.Fatalf("Extend = %d, %v", got, err)
		}
		samples = append(samples, time.Since(start))
	}
	return samples
}

func benchHost(b *testing.B, inbox, outbox string) *Host {
	h, err := OpenHost(HostConfig{Inbox: inbox, Outbox: outbox, HostID: 1})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { closeNow(h) })
	return h
}

// idleCost measures an SPM process that has been idle for settle: its CPU share (% of
// one core, from its getrusage) and its reads per second, over window.
func idleCost(b testing.TB, spm *child, settle, window time.Duration) (cpuPercent, readsPerSec float64) {
	time.Sleep(settle)
	r0 := spm.report(b)
	time.Sleep(window)
	r1 := spm.report(b)
	wall := (r1.Wall - r0.Wall).Seconds()
	reads := func(s SPMStats) uint64 { return s.EventReads + s.FullScans + s.HostReads + s.OutboxReads }
	return 100 * (r1.CPU - r0.CPU).Seconds() / wall, float64(reads(r1.Stats)-reads(r0.Stats)) / wall
}

// BenchmarkRoundTrip: one host process (this one) and one SPM process, on files and on
// loop devices, with the default, adaptive polling; requests come 0–20 ms apart, as in
// a busy spell. The SPM's idle cost is measured after it has calmed down. colocated runs
// the SPM in this process, woken in-process.
func BenchmarkRoundTrip(b *testing.B) {
	const gap = 20 * time.Millisecond
	for _, kind := range []string{"file", "loop"} {
		b.Run(kind, func(b *testing.B) {
			var inbox, outbox string
			if kind == "file" {
				inbox, outbox = testVolumes(b)
			} else {
				inbox, outbox = loopVolumes(b)
			}
			spm := startSPMProcess(b, inbox, outbox, filepath.Join(b.TempDir(), "handled"))
			h := benchHost(b, inbox, outbox)
			b.ResetTimer()
			samples := roundTrips(b, h, b.N, gap)
			b.StopTimer()
			latency.Report(b, "rtt", samples, time.Microsecond)
			cpu, reads := idleCost(b, spm, 3*time.Second, 3*time.Second)
			b.ReportMetric(cpu, "idle-cpu-%")
			b.ReportMetric(reads, "idle-reads/s")
		})
	}
	b.Run("colocated", func(b *testing.B) {
		inbox, outbox := testVolumes(b)
		s, err := OpenSPM(SPMConfig{Inbox: inbox, Outbox: outbox, Handler: &recorder{}})
		if err != nil {
			b.Fatal(err)
		}
		defer s.Close()
		h := benchHost(b, inbox, outbox)
		s.AddLocal(h)
		b.ResetTimer()
		latency.Report(b, "rtt", roundTrips(b, h, b.N, gap), time.Microsecond)
	})
}

// BenchmarkPollInterval is the table of events-block poll intervals against latency and
// idle cost: the SPM process polls at a fixed interval (its adaptive default idles at
// the 100 ms row, and a request after a quiet spell sees that row's latency; 500 ms is
// vdsm's). Requests come at random phases; each row takes about 15 s at most.
func BenchmarkPollInterval(b *testing.B) {
	for _, interval := range []time.Duration{time.Millisecond, 2 * time.Millisecond, 5 * time.Millisecond,
		10 * time.Millisecond, 20 * time.Millisecond, 50 * time.Millisecond, 100 * time.Millisecond, 500 * time.Millisecond} {
		b.Run(interval.String(), func(b *testing.B) {
			inbox, outbox := testVolumes(b)
			spm := startSPMProcess(b, inbox, outbox, filepath.Join(b.TempDir(), "handled"),
				envPollMin+"="+interval.String(), envPollMax+"="+interval.String())
			h := benchHost(b, inbox, outbox)
			cpu, reads := idleCost(b, spm, 500*time.Millisecond, 2*time.Second)
			n := min(b.N, int(12*time.Second/interval))
			b.ResetTimer()
			samples := roundTrips(b, h, n, interval)
			b.StopTimer()
			latency.Report(b, "rtt", samples, time.Microsecond)
			b.ReportMetric(cpu, "idle-cpu-%")
			b.ReportMetric(reads, "idle-reads/s")
		})
	}
}

// BenchmarkFullScan: one SPM scan of the 250 mailboxes (one 1,000 KiB O_DIRECT read and
// the comparison with the last view), on a file and on a loop device.
func BenchmarkFullScan(b *testing.B) {
	for _, kind := range []string{"file", "loop"} {
		b.Run(kind, func(b *testing.B) {
			var inbox string
			if kind == "file" {
				inbox, _ = testVolumes(b)
			} else {
				inbox, _ = loopVolumes(b)
			}
			v, err := OpenVolume(inbox, VolumeOptions{})
			if err != nil {
				b.Fatal(err)
			}
			defer v.Close()
			s := bareSPM(b, &recorder{})
			s.in, s.scanBuf = v, AlignedBuffer(UsedSize)
			b.SetBytes(UsedSize)
			for b.Loop() {
				s.fullScan(time.Now())
			}
			b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N), "µs/scan")
		})
	}
}
