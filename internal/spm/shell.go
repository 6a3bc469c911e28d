package spm

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// lvmSettings is the configuration every SPM command gets on its command line,
// over the host's lvm.conf, which the SPM otherwise keeps (the operator's locking,
// the filters of the commands they run themselves):
//   - no aio (each command can wait ~34 ms in io_destroy), no activation (the host
//     that runs the VM reloads its own table), no udev, hints or component probes
//     (--devices names the PVs, nothing else is read; lvm applies no filter to them);
//   - backup/retain_min=50 backup/retain_days=0, vdsm's practice: lvm still writes
//     an archive before each change and the backup after it, for the operator's
//     vgcfgrestore, but keeps the last 50 archives only. lvm's stock defaults (10,
//     and 30 days) would keep every extend of the last 30 days in /etc/lvm/archive:
//     thousands of files a day on a busy SPM.
//
// lvmArgs adds devices/use_devicesfile=0 when --devices is given: a devices
// file (system.devices) that does not list the domain's PVs must not hide them.
const lvmSettings = `global/use_aio=0 global/activation=0 devices/hints="none" ` +
	`devices/obtain_device_list_from_udev=0 devices/external_device_info_source="none" ` +
	`devices/md_component_detection=0 devices/fw_raid_component_detection=0 devices/multipath_component_detection=0 ` +
	`backup/retain_min=50 backup/retain_days=0`

// lvmArgs are the options of every SPM command: the settings, and --devices with
// the devices file off when devices are given.
func lvmArgs(devices []string) []string {
	if len(devices) == 0 {
		return []string{"--config", lvmSettings}
	}
	return []string{"--devices", strings.Join(devices, ","), "--config", lvmSettings + " devices/use_devicesfile=0"}
}

// lvmProfile is the command profile lvm2 ships for lvmdbusd: JSON reports and,
// on the report fd, one command log per command with the shell's status row.
const lvmProfile = "lvmdbusd"

// errShellDied is returned for a command whose lvm process ended before it
// reported: whether the command took effect is unknown (read the metadata).
var errShellDied = errors.New("lvm shell ended before reporting the command")

// shell is one long-lived lvm process fed one command per line on stdin, which
// reports each command's status as JSON on LVM_REPORT_FD: a command costs no
// process start (measured: 4–6 ms per lvextend, against 12–15 ms for a process
// each). Commands run one at a time, each to its end: closing the shell, or the
// SPM dying, only closes lvm's stdin, and lvm exits after the command under way.
type shell struct {
	path string
	log  zerolog.Logger

	mu     sync.Mutex
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	report *reportReader
	repR   *os.File
	tail   *lineTail
	exited chan struct{}
}

func newShell(path string, log zerolog.Logger) *shell {
	return &shell{path: path, log: log}
}

// start runs a new lvm process; s.mu is held.
func (s *shell) start() error {
	repR, repW, err := os.Pipe()
	if err != nil {
		return fmt.Errorf("lvm shell: report pipe: %w", err)
	}
	// Not cmd.StdoutPipe: Wait closes that pipe, and must not run while it is
	// read. Here Wait runs once the reader has seen EOF.
	outR, outW, err := os.Pipe()
	if err != nil {
		repR.Close()
		repW.Close()
		return fmt.Errorf("lvm shell: output pipe: %w", err)
	}
	fail := func(err error) error {
		repR.Close()
		repW.Close()
		outR.Close()
		outW.Close()
		return fmt.Errorf("lvm shell: %w", err)
	}
	cmd := exec.Command(s.path)
	// HOME=/dev/null: lvm's shell rewrites $HOME/.lvm_history after every
	// command (its last 100 lines, through libedit's character conversions):
	// measured 2.5–3 ms of a 7.5 ms lvextend, and the SPM's commands do not
	// belong in root's history. Under /dev/null the file cannot be created.
	cmd.Env = append(os.Environ(), "HOME=/dev/null", "LVM_REPORT_FD=3", "LVM_COMMAND_PROFILE="+lvmProfile,
		"LVM_SUPPRESS_FD_WARNINGS=1", "LC_ALL=C")
	cmd.ExtraFiles = []*os.File{repW}
	// Its own process group: a ^C meant for the SPM must not stop lvm mid-command.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return fail(err)
	}
	// stdout and stderr both: lvm prints messages to either; they are for the log.
	cmd.Stdout, cmd.Stderr = outW, outW
	if err := cmd.Start(); err != nil {
		return fail(fmt.Errorf("start %s: %w", s.path, err))
	}
	repW.Close()
	outW.Close()
	s.cmd, s.stdin, s.repR, s.report = cmd, stdin, repR, newReportReader(repR)
	s.tail = &lineTail{}
	s.exited = make(chan struct{})
	go func(tail *lineTail, exited chan struct{}) {
		tail.collect(outR, s.log) // to EOF: lvm and every child of it gone
		outR.Close()
		err := cmd.Wait()
		s.log.Debug().Err(err).Int("pid", cmd.Process.Pid).Msg("lvm shell exited")
		close(exited)
	}(s.tail, s.exited)
	s.log.Debug().Int("pid", cmd.Process.Pid).Str("lvm", s.path).Msg("lvm shell started")
	return nil
}

// run runs one lvm command (its name first) to its end and returns nil when lvm
// reports success, or an error carrying lvm's error messages.
func (s *shell) run(args ...string) error {
	line, err := commandLine(args)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	slow := time.AfterFunc(warnSlow, func() {
		s.log.Warn().Str("command", line).Dur("running_for", warnSlow).Msg("lvm command still running (VG lock held, or storage not answering); it runs to its end")
	})
	defer slow.Stop()
	rows, err := s.send(line)
	if err != nil {
		return err
	}
	ok, err := commandStatus(rows, args[0])
	if err != nil {
		// Out of step with lvm: a new shell for the next command.
		s.stop()
		return fmt.Errorf("%w: %w", errShellDied, err)
	}
	if ok {
		return nil
	}
	return fmt.Errorf("lvm %s failed: %s", args[0], s.errors())
}

// send writes one command line and reads its report, starting lvm if needed. A
// shell known to have exited is replaced first; a write that fails (lvm died
// since) sent nothing, so the command goes to a new shell, once.
func (s *shell) send(line string) ([]logRow, error) {
	if s.cmd != nil && s.hasExited() {
		s.log.Info().Msg("the lvm shell had exited; starting another")
		s.stop()
	}
	for retried := false; ; retried = true {
		if s.cmd == nil {
			if err := s.start(); err != nil {
				return nil, err
			}
		}
		s.tail.reset()
		_, err := io.WriteString(s.stdin, line+"\n")
		if err == nil {
			break
		}
		s.stop()
		if retried {
			return nil, fmt.Errorf("lvm shell: command not sent: %w", err)
		}
		s.log.Info().Err(err).Msg("the lvm shell died since the last command; sending it to another")
	}
	rows, err := s.report.next()
	if err != nil {
		s.stop()
		return nil, fmt.Errorf("%w: %w (output: %s)", errShellDied, err, s.tail.String())
	}
	return rows, nil
}

// hasExited reports whether the lvm process is known to have exited; s.mu is held.
func (s *shell) hasExited() bool {
	select {
	case <-s.exited:
		return true
	default:
		return false
	}
}

// errors returns the error messages of the last command: lvm's lastlog, or
// what it printed when that fails.
func (s *shell) errors() string {
	printed := s.tail.String() // send clears it for lastlog's own output
	rows, err := s.send("lastlog --select log_type=error")
	var msgs []string
	if err == nil {
		for _, r := range rows {
			msgs = append(msgs, r.Message)
		}
	}
	if len(msgs) == 0 {
		return printed
	}
	return strings.Join(msgs, "; ")
}

// stop closes lvm's stdin and lets it exit on its own; s.mu is held.
func (s *shell) stop() {
	if s.cmd == nil {
		return
	}
	s.stdin.Close()
	s.repR.Close()
	s.cmd = nil
}

// Close ends the shell after the command under way and waits for lvm to exit.
func (s *shell) Close() {
	s.mu.Lock()
	exited := s.exited
	s.stop()
	s.mu.Unlock()
	if exited != nil {
		<-exited
	}
}

// commandLine joins args for lvm's shell, which splits on blanks and strips
// quotes but knows no escapes: an argument with a blank or a double quote is
// single-quoted, and one that cannot be quoted is refused.
func commandLine(args []string) (string, error) {
	quoted := make([]string, len(args))
	for i, a := range args {
		switch {
		case a == "" || strings.ContainsAny(a, "'\n\r\x00"):
			return "", fmt.Errorf("lvm argument %q cannot be passed to lvm's shell", a)
		case strings.ContainsAny(a, " \t\""):
			quoted[i] = "'" + a + "'"
		default:
			quoted[i] = a
		}
	}
	return strings.Join(quoted, " "), nil
}

// lineTail keeps the last lines lvm printed since the last command started,
// and logs each at debug level.
type lineTail struct {
	mu    sync.Mutex
	lines []string
}

const (
	tailLines   = 8
	maxLineSize = 1 << 20 // longest line of lvm's output logged
)

// collect reads r to its end: lvm blocks on a full pipe, so a line longer than
// the buffer (or any read error) only stops the logging, never the reading.
func (t *lineTail) collect(r io.Reader, log zerolog.Logger) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLineSize)
	defer func() {
		if err := sc.Err(); err != nil {
			log.Debug().Err(err).Msg("lvm output not logged from here on")
			io.Copy(io.Discard, r)
		}
	}()
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" {
			continue
		}
		log.Debug().Str("lvm_output", l).Msg("lvm")
		t.mu.Lock()
		t.lines = append(t.lines, l)
		if len(t.lines) > tailLines {
			t.lines = t.lines[len(t.lines)-tailLines:]
		}
		t.mu.Unlock()
	}
}

func (t *lineTail) reset() {
	t.mu.Lock()
	t.lines = nil
	t.mu.Unlock()
}

func (t *lineTail) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.lines) == 0 {
		return "no message"
	}
	return strings.Join(t.lines, "; ")
}

// warnSlow is how long a command may take before the SPM logs that LVM is slow
// (its VG lock held by an operator's command, storage not answering).
const warnSlow = 10 * time.Second
