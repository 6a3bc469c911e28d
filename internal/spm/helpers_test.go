package spm

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"

	"github.com/lvwatch/lvwatch/internal/lvm"
	"github.com/lvwatch/lvwatch/internal/lvm/lvmtest"
	"github.com/lvwatch/lvwatch/internal/mailbox"
	"github.com/lvwatch/lvwatch/internal/process"
	"github.com/lvwatch/lvwatch/internal/spm/spmtest"
	"github.com/lvwatch/lvwatch/internal/testutil"
)

// The test binary re-executes itself as a host or an SPM process, so that the tests
// run real OS processes sharing the mailbox volumes. The role comes in the environment.
const (
	envRole     = "LVWATCH_SPM_TEST_ROLE" // "host" or "spm"
	envConfig   = "LVWATCH_SPM_TEST_CONFIG"
	envRequests = "LVWATCH_SPM_TEST_REQUESTS"
)

func TestMain(m *testing.M) {
	switch os.Getenv(envRole) {
	case "host":
		os.Exit(runHostRole())
	case "spm":
		os.Exit(runSPMRole())
	}
	os.Exit(m.Run())
}

// hostJob is a series of extends of one volume, one after the other, by a host process.
type hostJob struct {
	Domain string   `json:"domain"`
	Volume string   `json:"volume"`
	Sizes  []uint64 `json:"sizes_mib"`
}

// hostConfig is what a host process does: its jobs run at once.
type hostConfig struct {
	Inbox, Outbox string
	HostID        int
	Jobs          []hostJob
}

// hostResult is one extend's outcome, one JSON line on the host's stdout.
type hostResult struct {
	Host    int    `json:"host"`
	Volume  string `json:"volume"`
	SizeMiB uint64 `json:"size_mib"`
	Granted uint64 `json:"granted_mib"`
	Err     string `json:"err,omitempty"`
}

func runHostRole() int {
	var cfg hostConfig
	if err := json.Unmarshal([]byte(os.Getenv(envRequests)), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	log := zerolog.New(os.Stderr).Level(zerolog.WarnLevel)
	h, err := mailbox.OpenHost(mailbox.HostConfig{Inbox: cfg.Inbox, Outbox: cfg.Outbox, HostID: cfg.HostID, Log: log, TakeOver: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	var wg sync.WaitGroup
	for _, j := range cfg.Jobs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			dom, _ := mailbox.ParseUUID(j.Domain)
			vol, _ := mailbox.ParseUUID(j.Volume)
			for _, sz := range j.Sizes {
				granted, err := h.Extend(context.Background(), dom, vol, sz)
				r := hostResult{Host: cfg.HostID, Volume: j.Volume, SizeMiB: sz, Granted: granted}
				if err != nil {
					r.Err = err.Error()
				}
				mu.Lock()
				enc.Encode(r)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if err := h.Close(context.Background()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	return 0
}

// runSPMRole serves the Config in the environment until SIGTERM (or SIGKILL); after
// a SIGTERM it prints its final Status, as JSON, on stdout.
func runSPMRole() int {
	var cfg Config
	if err := json.Unmarshal([]byte(os.Getenv(envConfig)), &cfg); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	cfg.Log = zerolog.New(os.Stderr).Level(zerolog.InfoLevel)
	s, err := Start(cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	fmt.Println("ready")
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGTERM)
	<-sig
	if err := s.Close(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	if err := json.NewEncoder(os.Stdout).Encode(s.Status()); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 3
	}
	return 0
}

// testDomain is a storage domain on loop devices: a VG named by a fresh UUID on the
// first devices, spare PVs for vgextend, and mailbox volumes in files.
type testDomain struct {
	t             testing.TB
	env           *lvmtest.Env
	vg            string
	pvs, spare    []string
	inbox, outbox string
}

func newUUID(t testing.TB) string {
	var u mailbox.UUID
	if _, err := rand.Read(u[:]); err != nil {
		t.Fatal(err)
	}
	return u.String()
}

// newTestDomain makes a VG with 1 MiB extents on inVG devices of pvSize bytes and
// leaves spare more devices as PVs outside it.
func newTestDomain(t testing.TB, inVG, spare int, pvSize int64) *testDomain {
	return newNamedTestDomain(t, newUUID(t), inVG, spare, pvSize)
}

func newNamedTestDomain(t testing.TB, vg string, inVG, spare int, pvSize int64) *testDomain {
	env := lvmtest.New(t, inVG+spare, pvSize)
	spmtest.Use(t, env)
	d := &testDomain{t: t, env: env, vg: vg, pvs: env.Paths()[:inVG], spare: env.Paths()[inVG:]}
	env.CreateVG(d.vg, d.pvs, nil, []string{"-s", "1m"})
	if spare > 0 {
		env.MustRun(append([]string{"pvcreate", "-q", "-y"}, d.spare...)...)
	}
	dir := t.TempDir()
	d.inbox, d.outbox = filepath.Join(dir, "inbox"), filepath.Join(dir, "outbox")
	for _, p := range []string{d.inbox, d.outbox} {
		v, err := mailbox.OpenVolume(p, mailbox.VolumeOptions{Create: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := v.Init(); err != nil {
			t.Fatal(err)
		}
		v.Close()
	}
	return d
}

// createLVs makes LVs of sizeMiB each, through one lvm process.
func (d *testDomain) createLVs(sizeMiB int, names ...string) {
	d.t.Helper()
	var cmds []string
	for _, n := range names {
		cmds = append(cmds, fmt.Sprintf("lvcreate -q -n %s -L %dm %s", n, sizeMiB, d.vg))
	}
	if err := d.env.Shell(cmds); err != nil {
		d.t.Fatal(err)
	}
}

func (d *testDomain) config() DomainConfig {
	return DomainConfig{VG: d.vg, Inbox: d.inbox, Outbox: d.outbox, Devices: d.pvs}
}

// readVG reads the VG from every device of the test, as a host would.
func (d *testDomain) readVG() *lvm.VG {
	d.t.Helper()
	vg, err := lvm.ReadVG(context.Background(), d.vg, d.env.Paths())
	if err != nil {
		d.t.Fatal(err)
	}
	return vg
}

// sizesMiB are the LVs' sizes.
func (d *testDomain) sizesMiB() map[string]uint64 {
	vg := d.readVG()
	out := map[string]uint64{}
	for i := range vg.LVs {
		out[vg.LVs[i].Name] = vg.LVs[i].Size(vg) >> 20
	}
	return out
}

// vgck fails the test unless lvm finds the VG consistent.
func (d *testDomain) vgck() {
	d.t.Helper()
	d.env.MustRun("vgck", d.vg)
}

// startSPM runs the SPM in this process, its log in the test's.
func (d *testDomain) startSPM(cfg Config) *SPM {
	d.t.Helper()
	if cfg.Domains == nil {
		cfg.Domains = []DomainConfig{d.config()}
	}
	cfg.Log = zerolog.New(zerolog.NewTestWriter(d.t)).Level(zerolog.InfoLevel)
	s, err := Start(cfg)
	if err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { s.Close() })
	return s
}

// hostProc is a host process running its jobs.
type hostProc struct {
	cmd    *exec.Cmd
	out    bytes.Buffer
	stderr bytes.Buffer
}

func (d *testDomain) startHost(id int, jobs ...hostJob) *hostProc {
	d.t.Helper()
	cfg, _ := json.Marshal(hostConfig{Inbox: d.inbox, Outbox: d.outbox, HostID: id, Jobs: jobs})
	p := &hostProc{cmd: exec.Command(os.Args[0], "-test.run=^$")}
	p.cmd.Env = append(os.Environ(), envRole+"=host", envRequests+"="+string(cfg))
	p.cmd.Stdout, p.cmd.Stderr = &p.out, &p.stderr
	if err := p.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	d.t.Cleanup(func() { p.cmd.Process.Kill(); p.cmd.Wait() })
	return p
}

// wait waits for the host to finish and returns its results.
func (p *hostProc) wait(t *testing.T) []hostResult {
	t.Helper()
	if err := p.cmd.Wait(); err != nil {
		t.Fatalf("host process: %v\n%s", err, p.stderr.String())
	}
	var res []hostResult
	sc := bufio.NewScanner(&p.out)
	for sc.Scan() {
		var r hostResult
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("host output %q: %v", sc.Text(), err)
		}
		res = append(res, r)
	}
	return res
}

// spmProc is the SPM in a process of its own, to be killed.
type spmProc struct {
	t      testing.TB
	cmd    *exec.Cmd
	stdout *bufio.Reader
	stderr *os.File
	done   bool
}

func (d *testDomain) startSPMProc(cfg Config, logPath string) *spmProc {
	d.t.Helper()
	if cfg.Domains == nil {
		cfg.Domains = []DomainConfig{d.config()}
	}
	js, _ := json.Marshal(cfg)
	logf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		d.t.Fatal(err)
	}
	p := &spmProc{t: d.t, cmd: exec.Command(os.Args[0], "-test.run=^$"), stderr: logf}
	p.cmd.Env = append(os.Environ(), envRole+"=spm", envConfig+"="+string(js))
	p.cmd.Stderr = logf
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		d.t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		d.t.Fatal(err)
	}
	// Ready once its mailbox is open (or it died trying).
	p.stdout = bufio.NewReader(out)
	line, _ := p.stdout.ReadString('\n')
	if strings.TrimSpace(line) != "ready" {
		p.cmd.Wait()
		logs, _ := os.ReadFile(logPath)
		d.t.Fatalf("SPM process did not start:\n%s", logs)
	}
	return p
}

func (p *spmProc) kill() {
	if p.done {
		return
	}
	p.done = true
	p.cmd.Process.Signal(syscall.SIGKILL)
	p.cmd.Wait()
	p.stderr.Close()
}

// stop ends the SPM with SIGTERM (a Close) and returns the Status it printed then.
func (p *spmProc) stop() Status {
	p.t.Helper()
	p.done = true
	defer p.stderr.Close()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		p.t.Fatal(err)
	}
	var st Status
	err := json.NewDecoder(p.stdout).Decode(&st)
	if werr := p.cmd.Wait(); err != nil || werr != nil {
		p.t.Fatalf("the SPM's final status: %v; exit: %v", err, werr)
	}
	return st
}

// children are the processes the SPM process started (its lvm shells), as pids.
func (p *spmProc) children(t *testing.T) []int {
	t.Helper()
	return children(t, p.cmd.Process.Pid)
}

// lvmShells are the lvm processes this test process runs: the shells of the SPMs
// it started (lvmtest's commands run one at a time, before or after).
func lvmShells(t *testing.T) []int {
	t.Helper()
	var shells []int
	for _, pid := range children(t, os.Getpid()) {
		if comm, err := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid)); err == nil && strings.TrimSpace(string(comm)) == "lvm" {
			shells = append(shells, pid)
		}
	}
	return shells
}

// inFlock reports whether process pid is blocked in flock (lvm waiting for the VG lock).
func inFlock(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/syscall", pid))
	return err == nil && strings.HasPrefix(string(b), strconv.Itoa(unix.SYS_FLOCK)+" ")
}

// children are the processes process pid started, as pids.
func children(t *testing.T, pid int) []int {
	t.Helper()
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/children", pid))
	if err != nil || len(tasks) == 0 {
		t.Fatalf("the threads of process %d: %v", pid, err)
	}
	var pids []int
	for _, f := range tasks {
		b, err := os.ReadFile(f)
		if err != nil {
			continue // the thread ended
		}
		for _, s := range strings.Fields(string(b)) {
			pid, err := strconv.Atoi(s)
			if err != nil {
				t.Fatalf("%s: %q", f, b)
			}
			pids = append(pids, pid)
		}
	}
	return pids
}

// waitGone waits until the processes have exited (a zombie counts: not ours to reap).
func waitGone(t *testing.T, pids []int) {
	t.Helper()
	for _, pid := range pids {
		testutil.WaitFor(t, patience, fmt.Sprintf("process %d to exit", pid), func() bool { return process.Exited(pid) })
	}
}

// patience bounds the waits of the tests: it only turns a hang into a failure.
const patience = 60 * time.Second

// waiting is how many requests of the first domain wait for space.
func waiting(s *SPM) int { return len(s.Status().Domains[0].WaitingOnSpace) }
