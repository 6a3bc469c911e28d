package spm

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/latency"
	"github.com/lvwatch/lvwatch/internal/mailbox"
)

// benchDomain is a big sparse VG with 64 LVs, one per concurrent requester.
func benchDomain(b *testing.B) (*testDomain, []string) {
	d := newTestDomain(b, 1, 0, 64<<30)
	names := make([]string, 64)
	for i := range names {
		names[i] = newUUID(b)
	}
	d.createLVs(4, names...)
	return d, names
}

// Extends per second and per-request latency through the mailbox and the SPM, at
// 1, 16 and 64 requests at once from 16 hosts, beside the slow ways: one lvextend
// process per request with lvm's default configuration (naive), and one process
// per request with the SPM's configuration (process: what the shell saves).
func BenchmarkExtend(b *testing.B) {
	for _, conc := range []int{1, 16, 64} {
		b.Run(fmt.Sprintf("spm-%d", conc), func(b *testing.B) { benchSPM(b, conc) })
		b.Run(fmt.Sprintf("process-%d", conc), func(b *testing.B) {
			benchExec(b, conc, func(d *testDomain) []string {
				return []string{"--devices", strings.Join(d.pvs, ","), "--config", lvmSettings}
			})
		})
		b.Run(fmt.Sprintf("naive-%d", conc), func(b *testing.B) {
			// lvm's defaults: aio on (the test's lvm.conf turns it off), every device scanned.
			benchExec(b, conc, func(*testDomain) []string { return []string{"--config", "global/use_aio=1"} })
		})
	}
}

// concurrently runs n requests from conc goroutines, worker w extending LV w,
// and reports extends per second and latency quantiles.
func concurrently(b *testing.B, conc int, extend func(worker, step int) error) {
	var next atomic.Int64
	samples := make([][]time.Duration, conc)
	var wg sync.WaitGroup
	errs := make(chan error, conc)
	b.ResetTimer()
	start := time.Now()
	for w := range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for step := 1; next.Add(1) <= int64(b.N); step++ {
				t0 := time.Now()
				if err := extend(w, step); err != nil {
					errs <- err
					return
				}
				samples[w] = append(samples[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()
	close(errs)
	for err := range errs {
		b.Fatal(err)
	}
	var all []time.Duration
	for _, s := range samples {
		all = append(all, s...)
	}
	b.ReportMetric(float64(b.N)/elapsed.Seconds(), "extends/s")
	latency.Report(b, "extend", all, time.Millisecond)
}

func benchSPM(b *testing.B, conc int) {
	d, names := benchDomain(b)
	s, err := Start(Config{Domains: []DomainConfig{d.config()}, Log: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	hosts := make([]*mailbox.Host, min(conc, 16))
	for i := range hosts {
		h, err := mailbox.OpenHost(mailbox.HostConfig{Inbox: d.inbox, Outbox: d.outbox, HostID: i + 1, Log: zerolog.Nop()})
		if err != nil {
			b.Fatal(err)
		}
		defer h.Close(context.Background())
		hosts[i] = h
	}
	dom, _ := mailbox.ParseUUID(d.vg)
	concurrently(b, conc, func(w, step int) error {
		vol, _ := mailbox.ParseUUID(names[w])
		_, err := hosts[w%len(hosts)].Extend(context.Background(), dom, vol, uint64(4+step))
		return err
	})
}

func benchExec(b *testing.B, conc int, opts func(*testDomain) []string) {
	d, names := benchDomain(b)
	extra := opts(d)
	concurrently(b, conc, func(w, step int) error {
		args := append(append([]string{"lvextend"}, extra...), "-l", strconv.Itoa(4+step), d.vg+"/"+names[w])
		cmd := exec.Command("lvm", args...)
		cmd.Env = append(os.Environ(), "LVM_SUPPRESS_FD_WARNINGS=1")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("%v: %w\n%s", args, err, out)
		}
		return nil
	})
}

// The time from an operator's vgextend (its return) to the reply of a request
// that waited for space: the SPM notices the new PV by reading the VG's metadata
// header every SpacePoll, with no LVM command.
func BenchmarkSpaceArrival(b *testing.B) {
	d := newTestDomain(b, 1, 1, 64<<20)
	filler, lv := newUUID(b), newUUID(b)
	d.createLVs(8, lv)
	d.env.MustRun("lvcreate", "-q", "-n", filler, "-l", "100%FREE", d.vg)
	s, err := Start(Config{Domains: []DomainConfig{d.config()}, Log: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	h, err := mailbox.OpenHost(mailbox.HostConfig{Inbox: d.inbox, Outbox: d.outbox, HostID: 1, Log: zerolog.Nop()})
	if err != nil {
		b.Fatal(err)
	}
	defer h.Close(context.Background())
	dom, _ := mailbox.ParseUUID(d.vg)
	vol, _ := mailbox.ParseUUID(lv)
	var samples []time.Duration
	b.ResetTimer()
	for range b.N {
		type result struct {
			at  time.Time
			err error
		}
		done := make(chan result, 1)
		go func() {
			_, err := h.Extend(context.Background(), dom, vol, 16)
			done <- result{time.Now(), err}
		}()
		for waiting(s) == 0 {
			time.Sleep(time.Millisecond)
		}
		d.env.MustRun("vgextend", "-q", d.vg, d.spare[0])
		added := time.Now()
		r := <-done
		if r.err != nil {
			b.Fatal(r.err)
		}
		samples = append(samples, r.at.Sub(added))
		// Back to full: the extension sits on the new PV, which then leaves.
		d.env.MustRun("lvreduce", "-q", "-f", "-l", "8", d.vg+"/"+lv)
		d.env.MustRun("vgreduce", "-q", d.vg, d.spare[0])
	}
	b.StopTimer()
	latency.Report(b, "vgextend-to-reply", samples, time.Millisecond)
}
