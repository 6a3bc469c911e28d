//go:build vmtest

package agent_test

import (
	"context"
	"crypto/rand"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/lvwatch/lvwatch/internal/agent"
	"github.com/lvwatch/lvwatch/internal/dm/dmtest"
	"github.com/lvwatch/lvwatch/internal/latency"
	"github.com/lvwatch/lvwatch/internal/lvm"
	"github.com/lvwatch/lvwatch/internal/lvm/lvmtest"
	"github.com/lvwatch/lvwatch/internal/mailbox"
	"github.com/lvwatch/lvwatch/internal/spm"
	"github.com/lvwatch/lvwatch/internal/spm/spmtest"
	"github.com/lvwatch/lvwatch/internal/testutil"
)

// activation turns on what lvmtest's configuration turns off: the agent's host
// has its LVs active in device-mapper.
var activation = []string{"--config", "global/activation=1"}

// site is a storage domain on a loop device, active on this host: its inbox and
// outbox LVs, and a qcow2 volume LV per name.
type site struct {
	env *lvmtest.Env
	vg  string
}

func newUUID(t testing.TB) string {
	var u mailbox.UUID
	if _, err := rand.Read(u[:]); err != nil {
		t.Fatal(err)
	}
	return u.String()
}

func newSite(t testing.TB, pvSize int64) *site {
	t.Helper()
	dmtest.Control(t)
	env := lvmtest.New(t, 1, pvSize)
	spmtest.Use(t, env)
	s := &site{env: env, vg: newUUID(t)}
	env.CreateVG(s.vg, env.Paths(), nil, []string{"-s", "1m"})
	t.Cleanup(func() {
		if _, err := env.Run(append([]string{"vgchange", "-an"}, append(activation, s.vg)...)...); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	})
	for _, mb := range []string{"inbox", "outbox"} {
		s.lvcreate(t, mb, "8m")
		v, err := mailbox.OpenVolume(s.path(mb), mailbox.VolumeOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Init(); err != nil {
			t.Fatal(err)
		}
		v.Close()
	}
	return s
}

func (s *site) lvcreate(t testing.TB, lv, size string) {
	t.Helper()
	s.env.MustRun(append(append([]string{"lvcreate", "-q", "-Wn", "-Zn", "-n", lv, "-L", size}, activation...), s.vg)...)
}

func (s *site) path(lv string) string { return "/dev/mapper/" + lvm.DMName(s.vg, lv) }

// qcowLV makes an active LV holding a qcow2 header of 1 GiB virtual size.
func (s *site) qcowLV(t testing.TB, size string) string {
	t.Helper()
	lv := newUUID(t)
	s.lvcreate(t, lv, size)
	hdr, err := os.ReadFile("testdata/v3-1G.hdr")
	if err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(s.path(lv), os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteAt(hdr, 0); err != nil {
		t.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	return lv
}

func startAgent(t testing.TB, s *site, policy agent.Policy) *agent.Agent {
	t.Helper()
	return startAgentWith(t, s, agent.Config{Domains: []agent.Domain{{VG: s.vg, Policy: policy}}, SPM: &spm.Config{}})
}

// startAgentWith runs an agent of cfg (its host id, pins, records and log filled in).
func startAgentWith(t testing.TB, s *site, cfg agent.Config) *agent.Agent {
	t.Helper()
	pins := filepath.Join("/sys/fs/bpf", fmt.Sprintf("lvwatch-test-%d-agent", os.Getpid()))
	t.Cleanup(func() { os.RemoveAll(pins) })
	cfg.HostID, cfg.PinDir, cfg.StateDir = 1, pins, t.TempDir()
	cfg.Log = zerolog.New(zerolog.NewTestWriter(t)).Level(zerolog.InfoLevel)
	a, err := agent.Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		if err := a.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return a
}

// writeSequentially writes total bytes from offset 1 MiB on with O_DIRECT, 1 MiB
// at a time, as an image filling up does; an error (ENOSPC: a write past the
// LV's end) ends it.
func writeSequentially(path string, total int64) error {
	f, err := os.OpenFile(path, os.O_WRONLY|unix.O_DIRECT, 0)
	if err != nil {
		return err
	}
	defer f.Close()
	buf, err := unix.Mmap(-1, 0, 1<<20, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(buf)
	rand.Read(buf)
	for off := int64(1 << 20); off < total+1<<20; off += 1 << 20 {
		if _, err := f.WriteAt(buf, off); err != nil {
			return fmt.Errorf("write at %d MiB: %w", off>>20, err)
		}
	}
	return f.Sync()
}

// A writer filling a qcow2 LV far beyond its first size never meets its end: the
// co-located agent and SPM grow it chunk by chunk as it writes.
func TestWriterNeverMeetsTheEnd(t *testing.T) {
	testutil.RequireRoot(t)
	s := newSite(t, 2<<30)
	lvs := []string{s.qcowLV(t, "32m"), s.qcowLV(t, "32m")}
	// Under TCG a round trip takes up to a second or two while two writers run
	// flat out (tens of MiB/s each): the trigger covers that.
	a := startAgent(t, s, agent.Policy{Chunk: 96 << 20, Trigger: 96 << 20})
	allArmed := func() bool {
		armed := 0
		for _, v := range a.Status().Volumes {
			if v.State == agent.StateArmed {
				armed++
			}
		}
		return armed == len(lvs)
	}
	testutil.WaitFor(t, time.Minute, "the volumes armed", allArmed)
	const written = 160 << 20 // the loop devices live in the guest's tmpfs, 512 MiB
	var wg sync.WaitGroup
	errs := make(chan error, len(lvs))
	for _, lv := range lvs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := writeSequentially(s.path(lv), written); err != nil {
				errs <- fmt.Errorf("%s: %w", lv, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err) // ENOSPC: the writer met the LV's end
	}
	// The last writes may have crossed a threshold: that extension ends first.
	testutil.WaitFor(t, time.Minute, "the volumes armed after the writers", allArmed)
	for _, v := range a.Status().Volumes {
		if v.Extensions < 2 {
			t.Errorf("%s: %d extensions for 160 MiB from 32 MiB by 96 MiB", v.LV, v.Extensions)
		}
		if v.Size < written+1<<20 {
			t.Errorf("%s: %d MiB after 160 MiB written", v.LV, v.Size>>20)
		}
		if v.Last != nil {
			t.Logf("%s: %d MiB, %d extensions, last %+v", v.LV, v.Size>>20, v.Extensions, *v.Last)
		}
	}
	// The metrics say the same.
	rec := httptest.NewRecorder()
	a.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	var total, armed float64
	for _, l := range strings.Split(rec.Body.String(), "\n") {
		fmt.Sscanf(l, `lvwatch_extension_phase_seconds_count{phase="total"} %g`, &total)
		fmt.Sscanf(l, `lvwatch_watched_volumes{state="armed"} %g`, &armed)
	}
	if total < 4 || armed != 2 {
		t.Errorf("metrics: %g extensions timed, %g volumes armed; want ≥ 4 and 2:\n%s", total, armed, rec.Body.String())
	}
}

// With no SPM answering, a volume that needs space says it waits, and asks no
// more than its one standing request; an SPM started later serves that request
// and the volume is armed again.
func TestWaitsForAnAbsentSPM(t *testing.T) {
	testutil.RequireRoot(t)
	s := newSite(t, 1<<30)
	lv := s.qcowLV(t, "32m")
	a := startAgentWith(t, s, agent.Config{
		Domains:      []agent.Domain{{VG: s.vg, Policy: agent.Policy{Chunk: 64 << 20, Trigger: 48 << 20}}},
		WaitingAfter: time.Second,
	})
	state := func() agent.VolumeStatus {
		if vs := a.Status().Volumes; len(vs) == 1 && vs[0].LV == lv {
			return vs[0]
		}
		t.Fatalf("the volumes watched: %+v", a.Status().Volumes)
		return agent.VolumeStatus{}
	}
	testutil.WaitFor(t, time.Minute, "the volume to wait for the SPM", func() bool { return state().State == agent.StateWaiting })
	if v := state(); v.Size != 32<<20 || v.Error == "" {
		t.Errorf("waiting volume %+v: want 32 MiB and the reason", v)
	}
	sp, err := spm.Start(spm.Config{Domains: []spm.DomainConfig{{VG: s.vg}}, Log: zerolog.New(zerolog.NewTestWriter(t))})
	if err != nil {
		t.Fatal(err)
	}
	defer sp.Close()
	testutil.WaitFor(t, time.Minute, "the volume extended and armed", func() bool {
		v := state()
		return v.State == agent.StateArmed && v.Size == 96<<20
	})
	if st := sp.Status().Domains[0]; st.Requests != 1 || st.Extended != 1 {
		t.Errorf("the SPM got %d requests (%d extended): want the one standing request", st.Requests, st.Extended)
	}
}

// One extension end to end, from the crossing write to the re-armed, bigger LV,
// per phase, beside the vdsm way of doing the same step in the same guest: an
// lvextend process (metadata only, as on the SPM host), then `lvchange --refresh`
// on the host that runs the VM.
func BenchmarkExtension(b *testing.B) {
	s := newSite(b, 2<<30)
	ours, theirs := s.qcowLV(b, "64m"), s.qcowLV(b, "64m")
	const chunk = 8 << 20
	a := startAgent(b, s, agent.Policy{Chunk: chunk, Trigger: chunk})
	status := func() agent.VolumeStatus {
		for _, v := range a.Status().Volumes {
			if v.LV == ours {
				return v
			}
		}
		b.Fatalf("%s not watched", ours)
		return agent.VolumeStatus{}
	}
	testutil.WaitFor(b, time.Minute, "the volume armed", func() bool { return status().State == agent.StateArmed })
	extend := func() agent.Phases {
		before := status()
		testutil.WriteDirect(b, s.path(ours), int64(before.Threshold)) // ends past the threshold
		testutil.WaitFor(b, time.Minute, "the extension", func() bool {
			v := status()
			return v.Extensions > before.Extensions && v.State == agent.StateArmed
		})
		return *status().Last
	}
	// The first extension after a start pays once for what later ones find ready
	// (the SPM's first look at the domain's PVs, lvm's first command in its shell):
	// about 250 ms in the guest, its log line says. It is not counted.
	extend()
	var phases [5][]time.Duration
	b.ResetTimer()
	for range b.N {
		ph := extend()
		for i, d := range []time.Duration{ph.Total, ph.Detect, ph.Request, ph.Refresh, ph.Rearm} {
			phases[i] = append(phases[i], d)
		}
	}
	b.StopTimer()
	var vdsm []time.Duration
	for i := range b.N + 1 { // the first, with lvm's files not yet in the page cache, is not counted either
		t0 := time.Now()
		s.env.MustRun("lvextend", "-q", "-L", fmt.Sprintf("%dm", 64+8*(i+1)), s.vg+"/"+theirs)
		s.env.MustRun(append(append([]string{"lvchange", "-q", "--refresh"}, activation...), s.vg+"/"+theirs)...)
		if i > 0 {
			vdsm = append(vdsm, time.Since(t0))
		}
	}
	for i, name := range []string{"total", "detect", "request", "refresh", "rearm"} {
		latency.Report(b, name, phases[i], time.Millisecond)
	}
	latency.Report(b, "vdsm-chain", vdsm, time.Millisecond)
	b.ReportMetric(float64(latency.Quantile(vdsm, 0.5))/float64(latency.Quantile(phases[0], 0.5)), "p50-ratio")
}
