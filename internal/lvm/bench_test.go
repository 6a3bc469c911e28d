package lvm_test

import (
	"context"
	"testing"
	"time"

	"github.com/lvwatch/lvwatch/internal/latency"
	"github.com/lvwatch/lvwatch/internal/lvm"
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
