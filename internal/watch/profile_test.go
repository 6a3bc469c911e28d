package watch

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// profilePeriod is the sampling period of the cpu-clock profile: one sample per
// 10 µs the thread runs, as fast as the kernel's default sample rate allows.
const profilePeriod = 10_000 // ns

// probeFrames are the kernel functions through which block_bio_queue reaches
// its probes: the tracepoint's iterator when several are attached, else the one
// probe its static call goes to (the classic tracepoint's record filler, ftrace's
// event, the BTF raw tracepoint's glue, which tail-calls bpf_trace_run1). A
// sample with one of them in its call chain, or in one of lvwatch's programs
// (the kernel's unwinder stops in JIT code), is time the tracepoint cost its bio.
var probeFrames = []string{"__traceiter_block_bio_queue", "perf_trace_block_bio", "trace_event_raw_event_block_bio", "__bpf_trace_block_bio"}

// isProbeSample reports whether a sample's call chain (leaf first) is in the
// tracepoint's probes.
func isProbeSample(chain []string) bool {
	for i, sym := range chain {
		switch {
		case slices.Contains(probeFrames, sym),
			strings.HasPrefix(sym, "bpf_prog_") && strings.Contains(sym, "_lvw_"),
			sym == "bpf_trace_run1" && i+1 < len(chain) && chain[i+1] == "submit_bio_noacct_nocheck":
			return true
		}
	}
	return false
}

// threadProfile is a cpu-clock sampling profile of one thread with kernel call
// chains, recorded by perf while enabled, each sample stamped with
// CLOCK_MONOTONIC (monotonicNow's clock).
type threadProfile struct {
	cmd      *exec.Cmd
	out      string
	ctl, ack *os.File
	stderr   bytes.Buffer // shown on failure; its warnings would break the benchmark's line
}

// startThreadProfile starts perf record on thread tid, with sampling off until
// enable.
func startThreadProfile(b *testing.B, tid int) *threadProfile {
	b.Helper()
	ctlRead, ctlWrite, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	ackRead, ackWrite, err := os.Pipe()
	if err != nil {
		b.Fatal(err)
	}
	p := &threadProfile{out: filepath.Join(b.TempDir(), "perf.data"), ctl: ctlWrite, ack: ackRead}
	p.cmd = exec.Command("perf", "record", "-q", "-e", "cpu-clock", "-c", fmt.Sprint(profilePeriod), "-g", "--kernel-callchains",
		"-t", fmt.Sprint(tid), "-k", "CLOCK_MONOTONIC", "-m", "16M", "-o", p.out, "-D", "-1", "--control", "fd:3,4")
	p.cmd.ExtraFiles = []*os.File{ctlRead, ackWrite} // fds 3 and 4
	p.cmd.Stderr = &p.stderr
	if err := p.cmd.Start(); err != nil {
		b.Fatalf("start perf record: %v", err)
	}
	ctlRead.Close()
	ackWrite.Close()
	b.Cleanup(func() {
		p.ctl.Close()
		p.ack.Close()
		if p.cmd.ProcessState == nil {
			p.cmd.Process.Kill()
			p.cmd.Wait()
		}
	})
	return p
}

// command sends perf one control command and waits for its ack.
func (p *threadProfile) command(b *testing.B, cmd string) {
	b.Helper()
	if _, err := io.WriteString(p.ctl, cmd+"\n"); err != nil {
		b.Fatalf("perf control %s: %v", cmd, err)
	}
	ack := make([]byte, 5) // "ack\n" and its NUL
	if _, err := io.ReadFull(p.ack, ack); err != nil || string(ack) != "ack\n\x00" {
		b.Fatalf("perf control %s: ack %q, %v", cmd, ack, err)
	}
}

// sample is one sample of a profile: when, and whether in the tracepoint's probes.
type sample struct {
	at    time.Duration // CLOCK_MONOTONIC
	probe bool
}

// stop ends the recording and returns its samples in time order.
func (p *threadProfile) stop(b *testing.B) []sample {
	b.Helper()
	if _, err := io.WriteString(p.ctl, "stop\n"); err != nil {
		b.Fatalf("perf control stop: %v", err)
	}
	if err := p.cmd.Wait(); err != nil {
		b.Fatalf("perf record: %v: %s", err, &p.stderr)
	}
	if bytes.Contains(p.stderr.Bytes(), []byte("lost")) {
		b.Logf("perf record: %s", bytes.TrimSpace(p.stderr.Bytes()))
	}
	script := exec.Command("perf", "script", "-i", p.out, "-F", "tid,time,ip,sym", "--ns")
	var scriptErr bytes.Buffer
	script.Stderr = &scriptErr
	out, err := script.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := script.Start(); err != nil {
		b.Fatalf("perf script: %v", err)
	}
	samples, err := readSamples(out)
	if err != nil {
		b.Fatal(err)
	}
	if err := script.Wait(); err != nil {
		b.Fatalf("perf script: %v: %s", err, &scriptErr)
	}
	return samples
}

// readSamples reads perf script's samples: a header line (tid, then the time
// in seconds with a colon), a line per frame of the call chain, leaf first,
// each indented with a tab (address, symbol+offset), then a blank line.
func readSamples(r io.Reader) ([]sample, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	var samples []sample
	var chain []string
	end := func() {
		if len(samples) > 0 {
			samples[len(samples)-1].probe = isProbeSample(chain)
		}
		chain = chain[:0]
	}
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
		case line[0] != '\t': // the next sample's header
			end()
			fields := strings.Fields(line)
			if len(fields) < 2 {
				return nil, fmt.Errorf("perf script: sample header %q", line)
			}
			at, err := parseSeconds(strings.TrimSuffix(fields[1], ":"))
			if err != nil {
				return nil, fmt.Errorf("perf script: sample header %q: %w", line, err)
			}
			samples = append(samples, sample{at: at})
		default:
			if fields := strings.Fields(line); len(fields) >= 2 {
				sym, _, _ := strings.Cut(fields[1], "+")
				chain = append(chain, sym)
			}
		}
	}
	end()
	return samples, sc.Err()
}

// parseSeconds parses perf script's --ns time, seconds.nanoseconds.
func parseSeconds(s string) (time.Duration, error) {
	secs, nanos, ok := strings.Cut(s, ".")
	if !ok || len(nanos) != 9 {
		return 0, fmt.Errorf("time %q is not seconds.nanoseconds", s)
	}
	whole, err := strconv.ParseUint(secs, 10, 32)
	if err != nil {
		return 0, err
	}
	frac, err := strconv.ParseUint(nanos, 10, 32)
	if err != nil {
		return 0, err
	}
	return time.Duration(whole)*time.Second + time.Duration(frac), nil
}

// The benchmark's attribution: samples in each probe's frames count, those
// elsewhere in the submit path do not.
func TestReadSamples(t *testing.T) {
	const script = `  1364 21366.815328925: 
	ffffffff81b344d4 perf_trace_block_bio+0x14
	ffffffff81b3703f submit_bio_noacct_nocheck+0x1f

  1364 21366.815338925: 
	ffffffffc0000757 bpf_prog_5bd2296661764029_lvw_bio_btf+0x757
	            b6ae [unknown]

  1364 21366.815348925: 
	ffffffff814ca868 bpf_trace_run1+0x58
	ffffffff81b3703f submit_bio_noacct_nocheck+0x1f

  1364 21366.815358925: 
	ffffffff81b2c19f blkdev_write_iter+0x9f
	ffffffff816d8cec vfs_write+0xec

  1364 21366.815368925: 
	ffffffff814ca868 bpf_trace_run1+0x58
	ffffffff81b3703f sched_switch_probe+0x1f
`
	samples, err := readSamples(strings.NewReader(script))
	if err != nil {
		t.Fatal(err)
	}
	want := []bool{true, true, true, false, false}
	if len(samples) != len(want) {
		t.Fatalf("%d samples, want %d", len(samples), len(want))
	}
	for i, s := range samples {
		if s.probe != want[i] {
			t.Errorf("sample %d: probe %v, want %v", i, s.probe, want[i])
		}
	}
	if at := samples[1].at; at != 21366815338925*time.Nanosecond {
		t.Errorf("second sample at %v", at)
	}
}
