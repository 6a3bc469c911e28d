package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lvwatch/lvwatch/internal/loopdev"
	"github.com/lvwatch/lvwatch/internal/lvm/lvmtest"
	"github.com/lvwatch/lvwatch/internal/mailbox"
	"github.com/lvwatch/lvwatch/internal/testutil"
	"golang.org/x/sys/unix"
)

// lvwatchBin is the command built once for these tests: they run it as users do.
var lvwatchBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lvwatch-cmd-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	lvwatchBin = filepath.Join(dir, "lvwatch")
	if out, err := exec.Command("go", "build", "-o", lvwatchBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build lvwatch: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// lvwatch runs the command to completion and returns its stdout, stderr and exit code.
func lvwatch(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	var out, errOut strings.Builder
	cmd := exec.Command(lvwatchBin, args...)
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	if err != nil && cmd.ProcessState == nil {
		t.Fatalf("run lvwatch %v: %v", args, err)
	}
	return out.String(), errOut.String(), cmd.ProcessState.ExitCode()
}

func TestUsageAndExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args []string
		code int
	}{
		{nil, 2},
		{[]string{"no-such-command"}, 2},
		{[]string{"version"}, 0},
		{[]string{"watch", "-h"}, 0},
		{[]string{"watch", "/dev/null"}, 2},
		{[]string{"watch", "--threshold", "12 parsecs", "/dev/null"}, 2},
		{[]string{"watch", "--threshold", "1MiB", "/dev/null"}, 1}, // not a block device
		{[]string{"refresh", "novg"}, 2},
		{[]string{"mailbox"}, 2},
		{[]string{"mailbox", "dump"}, 2},
		{[]string{"extend", "--inbox", "a", "--outbox", "b", "--host-id", "250"}, 2},
	} {
		_, stderr, code := lvwatch(t, tc.args...)
		if code != tc.code {
			t.Errorf("lvwatch %q: exit %d, want %d; stderr:\n%s", tc.args, code, tc.code, stderr)
		}
	}
	if out, _, _ := lvwatch(t, "version"); !strings.HasPrefix(out, "lvwatch ") {
		t.Errorf("version printed %q", out)
	}
}

// requireRootBPF skips without root: the watcher needs it.
func requireRootBPF(t *testing.T) {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireFile(t, "/dev/loop-control", "loop devices")
}

// pinDir is a pin directory of the test's own, removed at cleanup even when the
// command under test was killed before it could unpin.
func pinDir(t *testing.T) string {
	dir := fmt.Sprintf("/sys/fs/bpf/lvwatch-cmd-test-%d-%s", os.Getpid(), t.Name())
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// startWatch runs `lvwatch watch --threshold 1MiB --pin-dir PINS ARGS... DEVICE` on a
// new 16 MiB loop device until it logs that it armed, and keeps its log drained
// after; it returns the device, the command (killed at the test's end), its
// stdout and PINS.
func startWatch(t *testing.T, args ...string) (*loopdev.Device, *exec.Cmd, io.Reader, string) {
	t.Helper()
	requireRootBPF(t)
	dev, err := loopdev.NewSparse("", 16<<20)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	pins := pinDir(t)
	cmd := exec.Command(lvwatchBin, append(append([]string{"watch", "--threshold", "1MiB", "--pin-dir", pins}, args...), dev.Path)...)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	stderr, err := cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	logs := bufio.NewScanner(stderr)
	var seen []string // the probe attached, then the armed message
	for len(seen) < 3 && logs.Scan() && !strings.Contains(logs.Text(), `"message":"armed"`) {
		seen = append(seen, logs.Text())
	}
	if !strings.Contains(logs.Text(), `"message":"armed"`) {
		t.Fatalf("no armed message in the first log lines:\n%s", strings.Join(append(seen, logs.Text()), "\n"))
	}
	go func() { // keep stderr drained
		for logs.Scan() {
		}
	}()
	return dev, cmd, stdout, pins
}

func TestWatchCommand(t *testing.T) {
	dev, cmd, stdout, pins := startWatch(t, "--rearm")

	lines := make(chan string)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	for i, offset := range []int64{1 << 20, 2 << 20} { // the second crossing needs --rearm
		testutil.WriteDirect(t, dev.Path, offset)
		var rec eventRecord
		select {
		case line := <-lines:
			if err := json.Unmarshal([]byte(line), &rec); err != nil {
				t.Fatalf("event line %q: %v", line, err)
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("crossing %d: no event line within 10s", i)
		}
		// --rearm moves the threshold one --step (default: --threshold) on.
		if rec.Device != dev.Path || rec.Offset != uint64(offset) || rec.Length != 4096 || rec.Threshold != uint64(i+1)<<20 ||
			rec.Dev != fmt.Sprintf("%d:%d", dev.Major, dev.Minor) || rec.PID != uint32(os.Getpid()) {
			t.Errorf("crossing %d: event %+v", i, rec)
		}
	}

	cmd.Process.Signal(syscall.SIGTERM)
	if err := cmd.Wait(); err != nil {
		t.Errorf("watch after SIGTERM: %v, want exit 0", err)
	}
	if _, err := os.Stat(pins); !os.IsNotExist(err) {
		t.Errorf("watch left %s at exit: %v", pins, err)
	}
}

func TestDemoCommand(t *testing.T) {
	requireRootBPF(t)
	stdout, stderr, code := lvwatch(t, "demo", "--pin-dir", pinDir(t))
	if code != 0 {
		t.Fatalf("demo: exit %d\n%s", code, stderr)
	}
	lines := strings.Split(strings.TrimSpace(stdout), "\n")
	if len(lines) != 7 { // 256 MiB in 32 MiB chunks: thresholds at 32..224 MiB
		t.Fatalf("demo printed %d event lines, want 7:\n%s", len(lines), stdout)
	}
	for i, line := range lines {
		var rec eventRecord
		if err := json.Unmarshal([]byte(line), &rec); err != nil || rec.Comm != "dd" || rec.Offset != uint64(i+1)*32<<20 {
			t.Errorf("line %d: %q (%v)", i, line, err)
		}
	}
}

// vdsmRequestBlock is host 7's inbox mailbox holding one extend request, as vdsm wrote it.
const vdsmRequestBlock = "../../internal/mailbox/testdata/vdsm/host7-request-mailbox.bin"

func TestMailboxCommands(t *testing.T) {
	dir := t.TempDir()
	inbox, outbox := filepath.Join(dir, "inbox"), filepath.Join(dir, "outbox")
	if _, stderr, code := lvwatch(t, "mailbox", "init", "--inbox", inbox, "--outbox", outbox); code == 0 {
		t.Errorf("init of missing files without --create succeeded")
	} else if !strings.Contains(stderr, "--create") {
		t.Errorf("init of missing files: %s", stderr)
	}
	if _, stderr, code := lvwatch(t, "mailbox", "init", "--create", "--inbox", inbox, "--outbox", outbox); code != 0 {
		t.Fatalf("init: exit %d\n%s", code, stderr)
	}
	const domain, volume = "8adbc85e-e554-4ae0-b318-8a5465fe5fe1", "d772f1c6-3ebb-43c3-a42e-73fcd8255a5f"
	extend := []string{"extend", "--inbox", inbox, "--outbox", outbox, "--host-id", "7", "--domain", domain, "--volume", volume, "--size-mib", "5120"}

	// No SPM: the request times out and is withdrawn: host 7's mailbox is all zero again.
	if _, stderr, code := lvwatch(t, append(extend, "--timeout", "300ms")...); code != 1 || !strings.Contains(stderr, "no reply") {
		t.Errorf("extend with no SPM: exit %d, want 1\n%s", code, stderr)
	}
	if in := readBlocks(t, inbox); mailbox.Mailbox(in[7*4096:8*4096]) != (mailbox.Mailbox{}) {
		t.Errorf("the withdrawn request's mailbox was not cleared: %x", in[7*4096:7*4096+64])
	} else if _, ok := mailbox.DecodeEvent((*mailbox.Mailbox)(in[:4096])); !ok {
		t.Error("extend wrote no events block: it never sent its request")
	}

	// dump decodes what vdsm wrote, and flags a mailbox whose checksum fails.
	request, err := os.ReadFile(vdsmRequestBlock)
	if err != nil {
		t.Fatalf("vdsm's reference bytes: %v", err)
	}
	corrupt := append([]byte(nil), request...)
	corrupt[40]++ // inside the size field
	f, err := os.OpenFile(inbox, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err1 := f.WriteAt(request, 7*4096)
	_, err2 := f.WriteAt(corrupt, 8*4096)
	f.Close()
	if err1 != nil || err2 != nil {
		t.Fatal(err1, err2)
	}
	stdout, stderr, code := lvwatch(t, "mailbox", "dump", "--json", "--inbox", inbox, "--outbox", outbox)
	if code != 0 {
		t.Fatalf("dump: exit %d\n%s", code, stderr)
	}
	var snap mailbox.Snapshot
	if err := json.Unmarshal([]byte(stdout), &snap); err != nil {
		t.Fatalf("dump --json: %v\n%s", err, stdout)
	}
	checks := map[int]bool{}
	for _, mb := range snap.Mailboxes {
		if mb.Box != "inbox" || mb.ChecksumOK == nil || len(mb.Slots) != 1 {
			t.Errorf("dump: %+v", mb)
			continue
		}
		checks[mb.HostID] = *mb.ChecksumOK
		if sl := mb.Slots[0]; mb.HostID == 7 && (sl.Kind != "extend" || sl.Domain != domain || sl.Volume != volume || sl.SizeMiB != 5120) {
			t.Errorf("dump of vdsm's request: %+v", sl)
		}
	}
	if len(checks) != 2 || !checks[7] || checks[8] {
		t.Errorf("checksum_ok by host: %v, want 7 good and 8 bad\n%s", checks, stdout)
	}
	// Host 7's mailbox holds vdsm's pending request: extend as host 7 refuses to erase it.
	if _, stderr, code := lvwatch(t, append(extend, "--timeout", "300ms")...); code != 1 ||
		!strings.Contains(stderr, "host id 7") || !strings.Contains(stderr, "--take-over") {
		t.Errorf("extend over vdsm's request: exit %d, want 1 naming host id 7 and --take-over\n%s", code, stderr)
	}
	if in := readBlocks(t, inbox); string(in[7*4096:8*4096]) != string(request) {
		t.Error("the refused extend changed vdsm's mailbox")
	}
	if _, stderr, code := lvwatch(t, "mailbox", "init", "--inbox", inbox, "--outbox", outbox); code != 0 {
		t.Fatalf("init: exit %d\n%s", code, stderr)
	}

	// An SPM (the mailbox's own, with a handler that grants) answers.
	spm, err := mailbox.OpenSPM(mailbox.SPMConfig{Inbox: inbox, Outbox: outbox,
		Handler: mailbox.HandlerFunc(func(_ context.Context, req mailbox.Request) (uint64, error) { return req.SizeMiB, nil })})
	if err != nil {
		t.Fatal(err)
	}
	defer spm.Close()
	stdout, stderr, code = lvwatch(t, append(extend, "--timeout", "30s")...)
	if code != 0 || !strings.Contains(stdout, "granted") || !strings.Contains(stdout, "size 5120 MiB") {
		t.Errorf("extend: exit %d, stdout %q\nstderr:\n%s", code, stdout, stderr)
	}
}

// readBlocks returns the 250 mailboxes of a volume file.
func readBlocks(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil || len(b) < mailbox.UsedSize {
		t.Fatalf("read %s: %d bytes, %v", path, len(b), err)
	}
	return b
}

// init and extend refuse a volume that is an LVM2 PV (a mistyped --inbox /dev/sdX) and
// leave it one; --force writes there all the same.
func TestMailboxRefusesPV(t *testing.T) {
	env := lvmtest.New(t, 2, 2<<20)
	pv, other := env.Paths()[0], env.Paths()[1]
	env.MustRun("pvcreate", "-q", pv)
	for _, args := range [][]string{
		{"mailbox", "init", "--inbox", pv, "--outbox", other},
		{"mailbox", "init", "--inbox", other, "--outbox", pv},
		{"extend", "--inbox", pv, "--outbox", other, "--host-id", "1", "--domain", "8adbc85e-e554-4ae0-b318-8a5465fe5fe1",
			"--volume", "d772f1c6-3ebb-43c3-a42e-73fcd8255a5f", "--size-mib", "1", "--timeout", "100ms"},
	} {
		if _, stderr, code := lvwatch(t, args...); code != 1 || !strings.Contains(stderr, "LVM2 physical volume") || !strings.Contains(stderr, "--force") {
			t.Errorf("lvwatch %v: exit %d, want 1 naming the PV and --force\n%s", args, code, stderr)
		}
	}
	env.MustRun("pvs", pv) // still a PV
	if _, stderr, code := lvwatch(t, "mailbox", "init", "--force", "--inbox", pv, "--outbox", other); code != 0 {
		t.Fatalf("init --force: exit %d\n%s", code, stderr)
	}
	if _, err := env.Run("pvs", pv); err == nil {
		t.Error("init --force left the PV label")
	}
}

// dump only looks: it works on volumes this host may not write.
func TestMailboxDumpReadOnly(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=4m"); err != nil {
		t.Fatalf("mount tmpfs: %v", err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	inbox, outbox := filepath.Join(dir, "inbox"), filepath.Join(dir, "outbox")
	if _, stderr, code := lvwatch(t, "mailbox", "init", "--create", "--inbox", inbox, "--outbox", outbox); code != 0 {
		if strings.Contains(stderr, "O_DIRECT refused") {
			testutil.SkipOrFail(t, "tmpfs refuses O_DIRECT on this kernel")
		}
		t.Fatalf("init: exit %d\n%s", code, stderr)
	}
	if err := unix.Mount("", dir, "", unix.MS_REMOUNT|unix.MS_RDONLY, ""); err != nil {
		t.Fatalf("remount read-only: %v", err)
	}
	if _, stderr, code := lvwatch(t, "mailbox", "init", "--inbox", inbox, "--outbox", outbox); code == 0 {
		t.Errorf("init on a read-only file system succeeded: %s", stderr)
	}
	if stdout, stderr, code := lvwatch(t, "mailbox", "dump", "--inbox", inbox, "--outbox", outbox); code != 0 {
		t.Errorf("dump on a read-only file system: exit %d\n%s\n%s", code, stdout, stderr)
	}
}
