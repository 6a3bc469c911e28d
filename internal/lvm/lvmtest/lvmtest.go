// Package lvmtest runs real LVM2 commands in tests, metadata only, on loop
// devices, isolated from the host's own devices and LVM configuration.
//
// An Env has its own lvm.conf (LVM_SYSTEM_DIR): activation off, no aio, no
// udev, no backups or archives, no hints or devices file, a filter accepting
// only the Env's loop devices, and its own locking directory. Nothing it runs
// touches device-mapper or any other device, so it works on machines without
// device-mapper. Its cleanup removes the VGs made through it and detaches the
// loop devices.
package lvmtest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/lvwatch/lvwatch/internal/loopdev"
	"github.com/lvwatch/lvwatch/internal/testutil"
)

// Env is an isolated LVM2 on loop devices.
type Env struct {
	t       testing.TB
	Dir     string // lvm.conf, locks, scratch files
	Devices []*loopdev.Device
	env     []string

	mu  sync.Mutex
	vgs []string
}

// Require skips (or fails, see testutil.SkipOrFail) unless the test can run
// LVM2 on loop devices: root, loop devices, the lvm binary.
func Require(t testing.TB) {
	t.Helper()
	testutil.RequireRoot(t)
	testutil.RequireFile(t, "/dev/loop-control", "loop devices")
	if _, err := exec.LookPath("lvm"); err != nil {
		testutil.SkipOrFail(t, "lvm2 not installed (tools/deps.sh installs it)")
	}
}

// New attaches n sparse loop devices of size bytes each and writes an lvm.conf
// that sees only them.
func New(t testing.TB, n int, size int64) *Env {
	t.Helper()
	Require(t)
	dir := t.TempDir()
	e := &Env{t: t, Dir: dir}
	t.Cleanup(e.cleanup)
	for i := 0; i < n; i++ {
		d, err := loopdev.NewSparse(dir, size)
		if err != nil {
			t.Fatalf("loop device: %v", err)
		}
		e.Devices = append(e.Devices, d)
	}
	var accept []string
	for _, d := range e.Devices {
		accept = append(accept, fmt.Sprintf(`"a|^%s$|"`, d.Path))
	}
	filter := "[ " + strings.Join(append(accept, `"r|.*|"`), ", ") + " ]"
	conf := fmt.Sprintf(`# written by lvmtest: metadata only, these loop devices only
devices {
	filter = %[1]s
	global_filter = %[1]s
	scan_lvs = 0
	obtain_device_list_from_udev = 0
	external_device_info_source = "none"
	use_devicesfile = 0
	hints = "none"
	multipath_component_detection = 0
	md_component_detection = 0
	fw_raid_component_detection = 0
}
global {
	activation = 0
	use_aio = 0
	locking_dir = "%[2]s/lock"
	use_lvmlockd = 0
	event_activation = 0
}
activation {
	udev_sync = 0
	udev_rules = 0
	monitoring = 0
}
backup {
	backup = 0
	archive = 0
}
`, filter, dir)
	if err := os.MkdirAll(filepath.Join(dir, "lock"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "lvm.conf"), []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	e.env = append(os.Environ(), "LVM_SYSTEM_DIR="+dir, "LVM_SUPPRESS_FD_WARNINGS=1", "LC_ALL=C")
	return e
}

func (e *Env) cleanup() {
	e.mu.Lock()
	vgs := e.vgs
	e.mu.Unlock()
	for _, vg := range vgs {
		if out, err := e.run(nil, "vgremove", "-f", "-y", vg); err != nil {
			e.t.Logf("cleanup: vgremove %s: %v\n%s", vg, err, out)
		}
	}
	for _, d := range e.Devices {
		if err := d.Close(); err != nil {
			e.t.Logf("cleanup: %v", err)
		}
	}
}

// Paths are the loop devices' paths.
func (e *Env) Paths() []string {
	out := make([]string, len(e.Devices))
	for i, d := range e.Devices {
		out[i] = d.Path
	}
	return out
}

// RemoveVGOnCleanup makes the cleanup remove vg (vgremove -f) before it
// detaches the loop devices. CreateVG does it itself.
func (e *Env) RemoveVGOnCleanup(vg string) {
	e.mu.Lock()
	e.vgs = append(e.vgs, vg)
	e.mu.Unlock()
}

// CreateVG runs pvcreate with pvArgs on the devices and vgcreate with vgArgs.
func (e *Env) CreateVG(vg string, devices []string, pvArgs, vgArgs []string) {
	e.t.Helper()
	e.MustRun(append(append([]string{"pvcreate", "-q", "-y"}, pvArgs...), devices...)...)
	e.RemoveVGOnCleanup(vg)
	e.MustRun(append(append(append([]string{"vgcreate", "-q"}, vgArgs...), vg), devices...)...)
}

func (e *Env) run(stdin []byte, args ...string) (string, error) {
	cmd := exec.Command("lvm", args...)
	cmd.Env = e.env
	var out, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &stderr
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	err := cmd.Run()
	errs := unexpected(stderr.String())
	if err == nil && errs != "" {
		err = fmt.Errorf("errors on stderr")
	}
	if err != nil {
		return out.String(), fmt.Errorf("lvm %s: %w\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return out.String(), nil
}

// unexpected returns the stderr lines that are neither warnings nor the
// notices lvm prints on success.
func unexpected(stderr string) string {
	var bad []string
	for _, l := range strings.Split(stderr, "\n") {
		l = strings.TrimSpace(l)
		switch {
		case l == "",
			strings.HasPrefix(l, "WARNING:"),
			strings.HasPrefix(l, "Using stripesize of last segment"),
			strings.HasPrefix(l, "Rounding size"),
			strings.HasPrefix(l, "Rounding up size"),
			strings.HasPrefix(l, "Logical volume") && strings.Contains(l, "created"),
			strings.HasPrefix(l, "Size of logical volume"),
			strings.HasSuffix(l, "successfully resized."),
			// Without device-mapper, commands that look for active LVs
			// (vgcfgrestore) say so and carry on.
			strings.HasPrefix(l, "/dev/mapper/control: open failed"),
			strings.HasPrefix(l, "Failure to communicate with kernel device-mapper driver"),
			strings.HasPrefix(l, "Check that device-mapper is available in the kernel"),
			strings.HasPrefix(l, "Incompatible libdevmapper"),
			// lvm's shell (Shell) on a host without a terminfo database, as in the test guest.
			l == "Cannot read termcap database;",
			l == "using dumb terminal settings.":
			continue
		}
		bad = append(bad, l)
	}
	return strings.Join(bad, "\n")
}

// Run runs one lvm command (its name first, as in `lvm lvextend ...`).
func (e *Env) Run(args ...string) (string, error) { return e.run(nil, args...) }

// MustRun is Run that fails the test on error.
func (e *Env) MustRun(args ...string) string {
	e.t.Helper()
	out, err := e.run(nil, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return out
}

// Shell feeds commands, one per line, to a single lvm process: several times
// faster than one process per command. It fails if any command wrote an error.
func (e *Env) Shell(cmds []string) error {
	_, err := e.run([]byte(strings.Join(cmds, "\n")+"\n"), []string{}...)
	return err
}

// Report runs an lvm reporting command (lvs, pvs, vgs) with JSON output,
// sizes in sectors without suffixes, and returns its rows.
func (e *Env) Report(cmd string, args ...string) ([]map[string]string, error) {
	full := append([]string{cmd, "--reportformat", "json", "--units", "s", "--nosuffix"}, args...)
	out, err := e.run(nil, full...)
	if err != nil {
		return nil, err
	}
	var rep struct {
		Report []map[string][]map[string]string `json:"report"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		return nil, fmt.Errorf("lvm %s: %w\n%s", strings.Join(full, " "), err, out)
	}
	var rows []map[string]string
	for _, r := range rep.Report {
		for _, v := range r {
			rows = append(rows, v...)
		}
	}
	return rows, nil
}

// MustReport is Report that fails the test on error.
func (e *Env) MustReport(cmd string, args ...string) []map[string]string {
	e.t.Helper()
	rows, err := e.Report(cmd, args...)
	if err != nil {
		e.t.Fatal(err)
	}
	return rows
}
