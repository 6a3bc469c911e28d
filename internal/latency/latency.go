// Package latency summarises latency samples for benchmarks: quantiles, and
// b.ReportMetric lines that benchstat and a reader can both use.
package latency

import (
	"slices"
	"testing"
	"time"
)

// Quantile returns the q-quantile (0..1) of samples by the nearest-rank method,
// or 0 for no samples. It sorts samples in place.
func Quantile(samples []time.Duration, q float64) time.Duration {
	if len(samples) == 0 {
		return 0
	}
	slices.Sort(samples)
	rank := int(q*float64(len(samples))+0.999999) - 1
	return samples[min(max(rank, 0), len(samples)-1)]
}

// Report adds name-p50-µs and name-p99-µs metrics to b (unit: microseconds,
// or milliseconds when unit is time.Millisecond).
func Report(b *testing.B, name string, samples []time.Duration, unit time.Duration) {
	suffix := "-µs"
	if unit == time.Millisecond {
		suffix = "-ms"
	}
	b.ReportMetric(float64(Quantile(samples, 0.50))/float64(unit), name+"-p50"+suffix)
	b.ReportMetric(float64(Quantile(samples, 0.99))/float64(unit), name+"-p99"+suffix)
}
