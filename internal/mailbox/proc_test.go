package mailbox

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/lvwatch/lvwatch/internal/testutil"
)

// The test binary re-executes itself as an SPM or a host process, so that the tests run
// real OS processes sharing the volumes. The role and its settings come in the environment.
const (
	envRole    = "LVWATCH_MAILBOX_TEST_ROLE" // "spm" or "host"
	envInbox   = "LVWATCH_MAILBOX_INBOX"
	envOutbox  = "LVWATCH_MAILBOX_OUTBOX"
	envHandled = "LVWATCH_MAILBOX_HANDLED"  // spm: file getting one line per request handled
	envDelay   = "LVWATCH_MAILBOX_DELAY"    // spm: the handler waits delay × (slot%8) before granting
	envPollMin = "LVWATCH_MAILBOX_POLL_MIN" // spm: SPMConfig.EventPollMin
	envPollMax = "LVWATCH_MAILBOX_POLL_MAX" // spm: SPMConfig.EventPollMax
	envScan    = "LVWATCH_MAILBOX_SCAN"     // spm: SPMConfig.ScanInterval
	envHostID  = "LVWATCH_MAILBOX_HOST"     // host: its id
	envCount   = "LVWATCH_MAILBOX_COUNT"    // host: requests to send at once
)

func TestMain(m *testing.M) {
	switch os.Getenv(envRole) {
	case "spm":
		os.Exit(runSPMRole())
	case "host":
		os.Exit(runHostRole())
	}
	os.Exit(m.Run())
}

func envDuration(name string) time.Duration {
	d, _ := time.ParseDuration(os.Getenv(name))
	return d
}

// runSPMRole serves until its standard input closes. Each line "stats" on standard input
// is answered on standard output with a JSON spmReport.
func runSPMRole() int {
	log := zerolog.New(os.Stderr).Level(zerolog.WarnLevel).With().Timestamp().Logger()
	handled, err := os.OpenFile(os.Getenv(envHandled), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		log.Error().Err(err).Msg("open handled log")
		return 1
	}
	var mu sync.Mutex
	delay := envDuration(envDelay)
	handler := HandlerFunc(func(ctx context.Context, req Request) (uint64, error) {
		mu.Lock()
		fmt.Fprintf(handled, "%d %d %s %d\n", req.HostID, req.Slot, req.Volume, req.SizeMiB)
		mu.Unlock()
		select {
		case <-time.After(delay * time.Duration(req.Slot%8)):
		case <-ctx.Done():
			return 0, ctx.Err()
		}
		return req.SizeMiB, nil
	})
	s, err := OpenSPM(SPMConfig{
		Inbox: os.Getenv(envInbox), Outbox: os.Getenv(envOutbox), Handler: handler, Log: log,
		EventPollMin: envDuration(envPollMin), EventPollMax: envDuration(envPollMax), ScanInterval: envDuration(envScan),
	})
	if err != nil {
		log.Error().Err(err).Msg("open SPM")
		return 1
	}
	start := time.Now()
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		if in.Text() == "stats" {
			json.NewEncoder(os.Stdout).Encode(spmReport{CPU: processCPU(), Wall: time.Since(start), Stats: s.Stats()})
		}
	}
	s.Close()
	return 0
}

type spmReport struct {
	CPU, Wall time.Duration
	Stats     SPMStats
}

// processCPU is the CPU time (user + system) this process has used.
func processCPU() time.Duration {
	var ru unix.Rusage
	unix.Getrusage(unix.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// runHostRole sends its requests at once, each for its own volume, checks every answer
// and finishes the handshakes before it exits.
func runHostRole() int {
	log := zerolog.New(os.Stderr).Level(zerolog.WarnLevel).With().Timestamp().Logger()
	id, _ := strconv.Atoi(os.Getenv(envHostID))
	count, _ := strconv.Atoi(os.Getenv(envCount))
	h, err := OpenHost(HostConfig{Inbox: os.Getenv(envInbox), Outbox: os.Getenv(envOutbox), HostID: id, Log: log})
	if err != nil {
		log.Error().Err(err).Msg("open host")
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 45*time.Second)
	defer cancel()
	var wg sync.WaitGroup
	var failed sync.Map
	for i := range count {
		wg.Go(func() {
			size := uint64(1000 + i)
			got, err := h.Extend(ctx, refDomain, volumeUUID(id*100+i), size)
			if err != nil || got != size {
				failed.Store(i, fmt.Sprintf("request %d: got %d, %v", i, got, err))
			}
		})
	}
	wg.Wait()
	h.Close(ctx)
	bad := 0
	failed.Range(func(_, v any) bool { fmt.Fprintln(os.Stderr, v); bad++; return true })
	if bad > 0 {
		return 1
	}
	fmt.Printf("host %d: %d answered\n", id, count)
	return 0
}

// child is a re-executed test binary.
type child struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
	stderr string // file
}

func startChild(t testing.TB, env ...string) *child {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), env...)
	stderr := filepath.Join(t.TempDir(), "stderr")
	f, err := os.Create(stderr)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	cmd.Stderr = f
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, stdin: stdin, stdout: bufio.NewReader(stdout), stderr: stderr}
	t.Cleanup(func() { c.kill() })
	return c
}

func (c *child) kill() {
	if c.cmd.ProcessState == nil {
		c.cmd.Process.Kill()
		c.cmd.Wait()
	}
}

// stop closes the child's standard input, which makes an SPM exit, and waits for it.
func (c *child) stop(t testing.TB) {
	c.stdin.Close()
	if err := c.cmd.Wait(); err != nil {
		t.Errorf("%s: %v\n%s", c.cmd.Env[len(c.cmd.Env)-1], err, c.log())
	}
}

func (c *child) log() string {
	b, _ := os.ReadFile(c.stderr)
	return string(b)
}

func (c *child) report(t testing.TB) spmReport {
	t.Helper()
	var r spmReport
	if _, err := io.WriteString(c.stdin, "stats\n"); err != nil {
		t.Fatal(err)
	}
	line, err := c.stdout.ReadBytes('\n')
	if err == nil {
		err = json.Unmarshal(line, &r)
	}
	if err != nil {
		t.Fatalf("SPM stats: %v\n%s", err, c.log())
	}
	return r
}

func volumeEnv(inbox, outbox string) []string {
	return []string{envInbox + "=" + inbox, envOutbox + "=" + outbox}
}

func startSPMProcess(t testing.TB, inbox, outbox, handled string, env ...string) *child {
	return startChild(t, append(append(volumeEnv(inbox, outbox), envRole+"=spm", envHandled+"="+handled), env...)...)
}

// handledLines returns the SPM processes' log of handled requests.
func handledLines(t testing.TB, path string) []string {
	b, err := os.ReadFile(path)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	return strings.Fields(strings.ReplaceAll(string(b), " ", "/"))
}

// runHosts starts one host process for each id, each sending count requests at once,
// and waits for them all.
func runHosts(t *testing.T, inbox, outbox string, ids []int, count int) {
	t.Helper()
	hosts := make([]*child, len(ids))
	for i, id := range ids {
		hosts[i] = startChild(t, append(volumeEnv(inbox, outbox), envRole+"=host",
			envHostID+"="+strconv.Itoa(id), envCount+"="+strconv.Itoa(count))...)
		hosts[i].stdin.Close()
	}
	for i, h := range hosts {
		if err := h.cmd.Wait(); err != nil {
			t.Errorf("host %d: %v\n%s", ids[i], err, h.log())
		}
	}
}

func hostRange(from, to int) []int {
	var ids []int
	for id := from; id <= to; id++ {
		ids = append(ids, id)
	}
	return ids
}

// 249 host processes, each with 63 requests in flight at once, against one SPM process:
// every request is answered, and handed to the SPM's handler exactly once.
func TestProcessesAllHostsAllSlots(t *testing.T) {
	if testing.Short() {
		t.Skip("starts 250 processes")
	}
	inbox, outbox := testVolumes(t)
	handled := filepath.Join(t.TempDir(), "handled")
	spm := startSPMProcess(t, inbox, outbox, handled)
	start := time.Now()
	runHosts(t, inbox, outbox, hostRange(MinHostID, MaxHostID), MessagesPerMbox)
	r := spm.report(t)
	t.Logf("%d requests answered in %v; SPM: %+v, CPU %v", MaxHostID*MessagesPerMbox, time.Since(start), r.Stats, r.CPU)
	spm.stop(t)

	seen := map[string]int{}
	for _, line := range handledLines(t, handled) {
		parts := strings.Split(line, "/")
		seen[parts[0]+"/"+parts[2]]++ // host and volume
	}
	if len(seen) != MaxHostID*MessagesPerMbox {
		t.Errorf("handler saw %d distinct requests, want %d", len(seen), MaxHostID*MessagesPerMbox)
	}
	for k, n := range seen {
		if n != 1 {
			t.Errorf("request %s handled %d times", k, n)
		}
	}
}

// The SPM process is killed while requests wait in its handler and a new one started:
// every request is still answered, and each one the killed SPM had taken but not
// answered is handled again by the new one.
func TestProcessesSPMKilledMidFlight(t *testing.T) {
	inbox, outbox := testVolumes(t)
	dir := t.TempDir()
	handled, handledAgain := filepath.Join(dir, "handled"), filepath.Join(dir, "handled-again")
	spm := startSPMProcess(t, inbox, outbox, handled, envDelay+"=100ms")
	const hosts = 20
	hostsDone := make(chan struct{})
	go func() {
		defer close(hostsDone)
		runHosts(t, inbox, outbox, hostRange(1, hosts), MessagesPerMbox)
	}()
	watch := openRaw(t, inbox, outbox)
	testutil.WaitFor(t, patience, "requests in the handler and some replies", func() bool {
		out := watch.read(watch.out, 1)
		return len(handledLines(t, handled)) >= 100 && out.Slot(0).Kind() != KindEmpty
	})
	spm.cmd.Process.Signal(unix.SIGKILL)
	spm.cmd.Wait()
	taken := handledLines(t, handled)
	if len(taken) >= hosts*MessagesPerMbox {
		t.Fatal("the SPM was killed after it had seen every request: not mid-flight")
	}
	// Without an SPM the hosts wait: what is in their slots with no reply stays there.
	pending := map[string]bool{}
	for id := 1; id <= hosts; id++ {
		in, out := watch.read(watch.in, id), watch.read(watch.out, id)
		for slot := range MessagesPerMbox {
			req, reply := in.Slot(slot), out.Slot(slot)
			if e, err := DecodeExtend(req); err == nil && !replyTo(&reply, &req) {
				pending[fmt.Sprintf("%d/%d/%s/%d", id, slot, e.Volume, e.SizeMiB)] = true
			}
		}
	}
	var unanswered []string
	for _, line := range taken {
		if pending[line] {
			unanswered = append(unanswered, line)
		}
	}
	if len(unanswered) == 0 {
		t.Fatalf("no request was in the killed SPM's handler (%d handled)", len(taken))
	}

	spm = startSPMProcess(t, inbox, outbox, handledAgain, envDelay+"=1ms")
	<-hostsDone
	again := map[string]bool{}
	for _, line := range handledLines(t, handledAgain) {
		again[line] = true
	}
	for _, line := range unanswered {
		if !again[line] {
			t.Errorf("request %s, taken by the killed SPM and not answered, was not handled again", line)
		}
	}
	t.Logf("killed SPM: %d handled, %d of them unanswered; new SPM: %d handled", len(taken), len(unanswered), len(again))
	spm.stop(t)
}

// Torn writes (half old, half new: the checksum disagrees) are never acted on, and an
// answered request is not handled again when its mailbox is torn around it.
func TestProcessesTornWrites(t *testing.T) {
	inbox, outbox := testVolumes(t)
	handled := filepath.Join(t.TempDir(), "handled")
	spm := startSPMProcess(t, inbox, outbox, handled, envScan+"=20ms")
	host := openRaw(t, inbox, outbox)
	const id = 33
	msg := func(n int) Message {
		m, _ := Extend{Domain: refDomain, Volume: volumeUUID(n), SizeMiB: 100}.Encode()
		return m
	}
	var old Mailbox
	old.SetSlot(1, msg(1))
	old.Seal()
	host.hostWrite(id, old)
	testutil.WaitFor(t, patience, "the first request", func() bool { return len(handledLines(t, handled)) == 1 })

	newer := old
	newer.SetSlot(0, msg(2))  // first half
	newer.SetSlot(40, msg(3)) // second half
	newer.Seal()
	half := BlockSize / 2
	torn := []Mailbox{old, old}
	copy(torn[0][:half], newer[:half]) // new first half, old checksum
	copy(torn[1][half:], newer[half:]) // old first half, new checksum
	for i, mb := range torn {
		if mb.Valid() {
			t.Fatalf("torn mailbox %d passes the checksum", i)
		}
		mismatches := spm.report(t).Stats.BadChecksums
		host.hostWrite(id, mb)
		testutil.WaitFor(t, patience, "the SPM to see the torn mailbox", func() bool { return spm.report(t).Stats.BadChecksums > mismatches })
		time.Sleep(100 * time.Millisecond) // several full scans and rechecks
		if n := len(handledLines(t, handled)); n != 1 {
			t.Fatalf("torn mailbox %d acted on: %d requests handled\n%s", i, n, handledLines(t, handled))
		}
	}
	host.hostWrite(id, newer)
	testutil.WaitFor(t, patience, "the whole mailbox to be handled", func() bool { return len(handledLines(t, handled)) == 3 })
	time.Sleep(100 * time.Millisecond)
	if lines := handledLines(t, handled); len(lines) != 3 {
		t.Errorf("handled %v, want each of the 3 requests once", lines)
	}
	spm.stop(t)
}
