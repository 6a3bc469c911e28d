package lvm_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lvwatch/lvwatch/internal/latency"
	"github.com/lvwatch/lvwatch/internal/lvm"
	"github.com/lvwatch/lvwatch/internal/lvm/lvmtest"
)

// BenchmarkReadVGTable measures what a refresh costs on the read side:
// ReadVG + Table for the most fragmented LV of a VG with ~240 segments over
// three PVs, reading the PVs named (devices) or scanning every block device
// (scan), and beside it `lvs --segments` on the same VG, the cheapest lvm
// command that reads the same metadata.
func BenchmarkReadVGTable(b *testing.B) {
	f := newFixture(b, "lvwatch-b-read", 90)
	vg, err := lvm.ReadVG(b.Context(), f.vg, f.env.Paths())
	if err != nil {
		b.Fatal(err)
	}
	lv, nseg := "", 0
	for _, l := range vg.LVs {
		if len(l.Segments) > nseg {
			lv, nseg = l.Name, len(l.Segments)
		}
	}
	b.Logf("LV %s: %d segments; VG text %d bytes", lv, nseg, vg.Copies[0].Location.Size())

	for _, mode := range []struct {
		name string
		read func(ctx context.Context) (*lvm.VG, error)
	}{
		{"devices", func(ctx context.Context) (*lvm.VG, error) { return lvm.ReadVG(ctx, f.vg, f.env.Paths()) }},
		{"scan", func(ctx context.Context) (*lvm.VG, error) { return lvm.ScanVG(ctx, f.vg, &lvm.HostConfig{}) }},
	} {
		b.Run(mode.name, func(b *testing.B) {
			var lat []time.Duration
			for b.Loop() {
				t0 := time.Now()
				vg, err := mode.read(b.Context())
				if err != nil {
					b.Fatal(err)
				}
				table, err := vg.Table(lv)
				if err != nil || len(table) != nseg {
					b.Fatalf("table of %d targets, %v", len(table), err)
				}
				lat = append(lat, time.Since(t0))
			}
			b.StopTimer()
			var lvs []time.Duration
			for i := 0; i < min(b.N, 20); i++ {
				t0 := time.Now()
				f.env.MustReport("lvs", "--segments", "-o", "lv_name,seg_start_pe,seg_size_pe,segtype,stripes,stripe_size,devices", f.vg+"/"+lv)
				lvs = append(lvs, time.Since(t0))
			}
			latency.Report(b, "readvg+table", lat, time.Millisecond)
			latency.Report(b, "lvs", lvs, time.Millisecond)
			b.ReportMetric(float64(latency.Quantile(lvs, 0.5))/float64(latency.Quantile(lat, 0.5)), "lvs/readvg-p50")
		})
	}
}

// bigVG is a VG of nLVs LVs of three segments each, interleaved, on one PV:
// megabytes of metadata text, committed by lvm itself (vgcfgrestore of a
// text built from its own backup of the empty VG).
func bigVG(b *testing.B, nLVs int) (*lvmtest.Env, string) {
	env := lvmtest.New(b, 1, 64<<30)
	vg := fmt.Sprintf("lvwatch-b-big-%d", os.Getpid())
	env.CreateVG(vg, env.Paths(), []string{"--metadatasize", "32m"}, []string{"-s", "1m"})
	backup := filepath.Join(env.Dir, "backup.vg")
	env.MustRun("vgcfgbackup", "-q", "-f", backup, vg)
	text, err := os.ReadFile(backup)
	if err != nil {
		b.Fatal(err)
	}
	var lvs strings.Builder
	lvs.WriteString("\n\tlogical_volumes {\n")
	for i := range nLVs {
		fmt.Fprintf(&lvs, "\t\tlv%05d {\n\t\t\tid = %q\n\t\t\tstatus = [\"READ\", \"WRITE\", \"VISIBLE\"]\n\t\t\tflags = []\n"+
			"\t\t\tcreation_time = 1700000000\n\t\t\tcreation_host = \"bench\"\n\t\t\tsegment_count = 3\n",
			i, lvm.FormatID(fmt.Sprintf("%032d", i)))
		for k := range 3 {
			fmt.Fprintf(&lvs, "\t\t\tsegment%d {\n\t\t\t\tstart_extent = %d\n\t\t\t\textent_count = 1\n\t\t\t\ttype = \"striped\"\n"+
				"\t\t\t\tstripe_count = 1\n\t\t\t\tstripes = [\n\t\t\t\t\t\"pv0\", %d\n\t\t\t\t]\n\t\t\t}\n", k+1, k, k*nLVs+i)
		}
		lvs.WriteString("\t\t}\n")
	}
	lvs.WriteString("\t}\n")
	end := strings.LastIndex(string(text), "\n}")
	if end < 0 {
		b.Fatalf("no VG section in %s", backup)
	}
	big := string(text[:end]) + lvs.String() + string(text[end:])
	if err := os.WriteFile(backup, []byte(big), 0o600); err != nil {
		b.Fatal(err)
	}
	env.MustRun("vgcfgrestore", "-q", "-f", backup, vg)
	return env, vg
}

// BenchmarkCachedReadVG: refreshing LVs one after another in a VG of 6000
// LVs, the metadata read and table build each costs, read and parsed in full
// every time (readvg, as before the cache) or served by the cache after one
// read of the mda header (cached).
func BenchmarkCachedReadVG(b *testing.B) {
	const nLVs = 6000
	env, vg := bigVG(b, nLVs)
	first, err := lvm.ReadVG(b.Context(), vg, env.Paths())
	if err != nil {
		b.Fatal(err)
	}
	if len(first.LVs) != nLVs {
		b.Fatalf("%d LVs, want %d", len(first.LVs), nLVs)
	}
	b.Logf("VG %s: %d LVs, metadata text %d bytes", vg, len(first.LVs), first.Copies[0].Location.Size())
	cache := lvm.NewCache()
	if _, _, err := cache.ReadVG(b.Context(), vg, env.Paths()); err != nil {
		b.Fatal(err)
	}
	timed := func(samples *[]time.Duration, i int, read func() (*lvm.VG, error)) {
		t0 := time.Now()
		got, err := read()
		if err == nil {
			_, err = got.Table(fmt.Sprintf("lv%05d", i%nLVs))
		}
		if err != nil {
			b.Fatal(err)
		}
		*samples = append(*samples, time.Since(t0))
	}
	var full, cached []time.Duration
	i := 0
	for b.Loop() {
		timed(&full, i, func() (*lvm.VG, error) { return lvm.ReadVG(b.Context(), vg, env.Paths()) })
		timed(&cached, i, func() (*lvm.VG, error) {
			got, hit, err := cache.ReadVG(b.Context(), vg, env.Paths())
			if err == nil && !hit {
				b.Fatal("the cache missed though the metadata did not change")
			}
			return got, err
		})
		i++
	}
	b.StopTimer()
	latency.Report(b, "readvg", full, time.Microsecond)
	latency.Report(b, "cached", cached, time.Microsecond)
	b.ReportMetric(float64(latency.Quantile(full, 0.5))/float64(latency.Quantile(cached, 0.5)), "readvg/cached-p50")
	b.ReportMetric(float64(first.Copies[0].Location.Size()), "text-bytes")
}
