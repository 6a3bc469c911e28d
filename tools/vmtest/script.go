package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/lvwatch/lvwatch/internal/size"
	"github.com/lvwatch/lvwatch/internal/testvm"
)

// -script: boot the guest, run a shell script in it as root, exit with its
// exit code. The guest has the tests' kernel, modules, lvm2 and busybox, plus
// lvwatch (built here), qemu-img and qemu-io, what a booted system mounts
// (bpffs, tracefs, /dev/shm, /dev/pts) and the scratch disks. A lib/ directory
// beside the script goes with it, for the shell functions scripts share
// (`. "$(dirname "$0")/lib/FILE"`).

// The guest's layout for a script, besides guestBinDir.
const (
	guestScriptDir = "/vmtest/script"
	guestScriptCwd = "/root"
	guestKitDir    = "/vmtest/kit" // -qemu: the testvm kit, for testvm run --kit
)

// guestPasswd and guestGroup name root, for the tools that look the user up (id, whoami).
const (
	guestPasswd = "root:x:0:0:root:/root:/bin/sh\n"
	guestGroup  = "root:x:0:\ntty:x:5:\n"
)

// scriptMain runs o.script in a guest and returns its exit code, or
// scriptExitCode when the guest gave none.
func scriptMain(ctx context.Context, o options) int {
	start := time.Now()
	code, err := runScriptHost(ctx, o)
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmtest: %v\n", err)
		fmt.Fprintf(os.Stderr, "vmtest: FAIL: no exit code from the script: exiting %d\n", scriptExitCode)
		return scriptExitCode
	}
	progress("the script exited %d; %.1fs in all", code, time.Since(start).Seconds())
	return code
}

// runScriptHost builds what the guest needs, boots it with the console
// streamed to stdout, and returns the exit code the guest reported.
func runScriptHost(ctx context.Context, o options) (int, error) {
	st, err := os.Stat(o.script)
	if err != nil {
		return 0, fmt.Errorf("-script: %w", err)
	}
	if !st.Mode().IsRegular() {
		return 0, fmt.Errorf("-script %s: not a regular file", o.script)
	}
	// The archive copies regular files only: not a symlink to one.
	scriptFile, err := filepath.EvalSymlinks(o.script)
	if err != nil {
		return 0, fmt.Errorf("-script: %w", err)
	}
	moduleDir, _, err := testvm.Module()
	if err != nil {
		return 0, err
	}
	if o.cacheDir == "" {
		o.cacheDir = testvm.CacheDir(moduleDir)
	}
	if err := os.MkdirAll(o.cacheDir, 0o755); err != nil {
		return 0, err
	}
	work, err := os.MkdirTemp("", "vmtest-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(work)

	needed := append(append([]string{"lvm", "dmsetup"}, vmHostTools...), scriptPrograms...)
	if o.qemu {
		needed = append(needed, qemuPrograms...)
	}
	if err := ensureHostTools(moduleDir, needed); err != nil {
		return 0, err
	}
	progress("building lvwatch and the guest's /init")
	binDir := filepath.Join(work, "bin")
	if err := testvm.GoStatic(moduleDir, "build", "-o", filepath.Join(binDir, "lvwatch"), "./cmd/lvwatch"); err != nil {
		return 0, err
	}
	if err := testvm.GoStatic(moduleDir, "build", "-o", filepath.Join(work, "init"), "./tools/vmtest"); err != nil {
		return 0, err
	}
	nonce := make([]byte, 4)
	rand.Read(nonce)
	p := scriptPlan(o, hex.EncodeToString(nonce))
	etc := filepath.Join(work, "etc")
	if err := os.MkdirAll(etc, 0o755); err != nil {
		return 0, err
	}
	if err := os.WriteFile(filepath.Join(etc, "passwd"), []byte(guestPasswd), 0o644); err != nil {
		return 0, err
	}
	if err := os.WriteFile(filepath.Join(etc, "group"), []byte(guestGroup), 0o644); err != nil {
		return 0, err
	}
	hostPaths := map[string]string{
		filepath.Join(guestBinDir, "lvwatch"): filepath.Join(binDir, "lvwatch"),
		p.Script.Path:                         scriptFile,
		"/etc/passwd":                         filepath.Join(etc, "passwd"),
		"/etc/group":                          filepath.Join(etc, "group"),
	}
	// The shell functions the scripts beside it share, sourced from lib/.
	lib := filepath.Join(filepath.Dir(scriptFile), "lib")
	if st, err := os.Stat(lib); err == nil && st.IsDir() {
		hostPaths[filepath.Join(guestScriptDir, "lib")] = lib
	}
	if o.qemu {
		if err := addNestedVM(o, moduleDir, binDir, p, hostPaths); err != nil {
			return 0, err
		}
	}

	if o.guests > 1 {
		return runScriptGuests(ctx, o, work, p, hostPaths)
	}
	var r scriptResult
	var console *markerFilter
	console = newMarkerFilter(os.Stdout, p.markerPrefix(), func(line string) {
		r.marker(line)
		if r.exited {
			// What follows is the guest powering off, not the script's output.
			console.out = os.Stderr
		}
	})
	err = bootGuest(ctx, o, work, p, hostPaths, console, scriptWhat(o))
	console.flush()
	if ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) {
		err = errors.New("interrupted")
	}
	return r.result(err)
}

// addNestedVM adds to the guest's payload what tools/testvm needs there for
// -qemu besides QEMU (qemuInitramfs): itself, built here, and the testvm kit
// in guestKitDir, which LVWATCH_TESTVM_KIT names.
func addNestedVM(o options, moduleDir, binDir string, p *plan, hostPaths map[string]string) error {
	progress("building tools/testvm and the testvm kit")
	if err := testvm.GoStatic(moduleDir, "build", "-o", filepath.Join(binDir, "testvm"), "./tools/testvm"); err != nil {
		return err
	}
	kit, err := testvm.Cache{Dir: o.cacheDir, Progress: progress}.Kit(moduleDir)
	if err != nil {
		return err
	}
	in := kit.In(guestKitDir)
	hostPaths[filepath.Join(guestBinDir, "testvm")] = filepath.Join(binDir, "testvm")
	hostPaths[in.Kernel], hostPaths[in.Initramfs] = kit.Kernel, kit.Initramfs
	p.Env = append(p.Env, "LVWATCH_TESTVM_KIT="+guestKitDir)
	return nil
}

func scriptWhat(o options) string {
	return fmt.Sprintf("for %s, %d scratch disks of %s", o.script, o.disks, size.Format(o.diskSize))
}

// runScriptGuests is runScriptHost's boot for -guests N: N guests of plan p
// (LVWATCH_GUEST=1... added to its environment) on the same scratch disks,
// each one's lines on stdout after "[i] ". When one guest's script fails, the
// others are stopped. The exit code is the first non-zero one, in the order
// the guests stopped.
func runScriptGuests(ctx context.Context, o options, work string, p *plan, hostPaths map[string]string) (int, error) {
	var mu sync.Mutex
	plans := make([]*plan, o.guests)
	outs := make([]io.Writer, o.guests)
	results := make([]scriptResult, o.guests)
	consoles := make([]*markerFilter, o.guests)
	var prefixers []*linePrefixer
	for i := range plans {
		gp := *p
		gp.Env = append(append([]string(nil), p.Env...), fmt.Sprintf("LVWATCH_GUEST=%d", i+1))
		plans[i] = &gp
		prefix := fmt.Sprintf("[%d] ", i+1)
		stdout := &linePrefixer{mu: &mu, out: os.Stdout, prefix: prefix}
		stderr := &linePrefixer{mu: &mu, out: os.Stderr, prefix: prefix}
		prefixers = append(prefixers, stdout, stderr)
		r := &results[i]
		r.name = prefix
		consoles[i] = newMarkerFilter(stdout, gp.markerPrefix(), func(line string) {
			r.marker(line)
			if r.exited {
				consoles[i].out = stderr
			}
		})
		outs[i] = consoles[i]
	}
	var codes []int
	done := func(i int, bootErr error) bool {
		consoles[i].flush()
		if ctx.Err() != nil && errors.Is(ctx.Err(), context.Canceled) {
			bootErr = errors.New("interrupted")
		}
		code, err := results[i].result(bootErr)
		if err != nil {
			progress("guest %d: %v", i+1, err)
			code = scriptExitCode
		} else {
			progress("guest %d: the script exited %d", i+1, code)
		}
		codes = append(codes, code)
		return code == 0
	}
	_, err := bootGuests(ctx, o, work, plans, hostPaths, outs, done, scriptWhat(o))
	for _, w := range prefixers {
		w.flush()
	}
	if err != nil {
		return 0, err
	}
	return firstFailure(codes), nil
}

// firstFailure is the first non-zero exit code, or 0.
func firstFailure(codes []int) int {
	for _, c := range codes {
		if c != 0 {
			return c
		}
	}
	return 0
}

// linePrefixer writes whole lines to out, each after prefix, under mu, so
// that the lines of several guests sharing out do not mix.
type linePrefixer struct {
	mu     *sync.Mutex
	out    io.Writer
	prefix string
	buf    []byte // the current line so far
}

func (w *linePrefixer) Write(b []byte) (int, error) {
	w.buf = append(w.buf, b...)
	end := bytes.LastIndexByte(w.buf, '\n')
	if end < 0 {
		return len(b), nil
	}
	var lines []byte
	for _, line := range bytes.SplitAfter(w.buf[:end+1], []byte("\n")) {
		if len(line) > 0 {
			lines = append(append(lines, w.prefix...), line...)
		}
	}
	w.buf = append(w.buf[:0], w.buf[end+1:]...)
	w.mu.Lock()
	defer w.mu.Unlock()
	if _, err := w.out.Write(lines); err != nil {
		return 0, err
	}
	return len(b), nil
}

// flush writes the last line when it has no line end.
func (w *linePrefixer) flush() {
	if len(w.buf) > 0 {
		w.Write([]byte("\n"))
	}
}

// scriptPlan is the guest's plan for -script: no tests, the script with its
// arguments, the booted system's mounts, the scratch disks in the environment.
func scriptPlan(o options, nonce string) *plan {
	return &plan{
		Nonce:   nonce,
		Timeout: guestLimit(o.timeout),
		Env: []string{
			"LVWATCH_BIN=" + filepath.Join(guestBinDir, "lvwatch"),
			"LVWATCH_SCRATCH_DISKS=" + strings.Join(guestDiskNames(o.disks), " "),
		},
		Modules: guestModules,
		Mounts:  bootedSystemMounts,
		Script: &guestScript{
			Path: filepath.Join(guestScriptDir, filepath.Base(o.script)),
			Args: o.args,
			Dir:  guestScriptCwd,
		},
	}
}

// scriptResult collects the runner's marker lines of a -script run.
type scriptResult struct {
	name   string // before its progress lines: which guest
	code   int
	exited bool   // the guest reported the script's exit code
	last   string // the last other marker line: why there is none
}

func (r *scriptResult) marker(line string) {
	progress("%s%s", r.name, line)
	if m := scriptExitMarker.FindStringSubmatch(line); m != nil {
		r.code, _ = strconv.Atoi(m[1])
		r.exited = true
		return
	}
	r.last = line
}

// result is the script's exit code, or why there is none. bootErr is the
// boot's: a guest killed at the time limit, a QEMU that failed.
func (r *scriptResult) result(bootErr error) (int, error) {
	switch {
	case r.exited:
		if bootErr != nil {
			progress("after the script exited %d: %v", r.code, bootErr)
		}
		return r.code, nil
	case bootErr != nil:
		return 0, bootErr
	case r.last != "":
		return 0, fmt.Errorf("the guest reported no exit code for the script: %s", r.last)
	default:
		return 0, errors.New("the guest stopped without reporting the script's exit code (a kernel panic or a crash of /init: see the console above)")
	}
}

// markerFilter passes the guest's console to out as it comes, except the
// lines that start with the runner's marker prefix, which go to onLine
// without the prefix and the line end. Only bytes that may still start a
// marker line wait: at most the prefix's length, at the start of a line.
type markerFilter struct {
	out    io.Writer
	marker string
	onLine func(string)
	held   []byte // the start of the current line, a prefix of marker so far
	inLine bool   // past the start of a line that is not a marker line
	marked bool   // in a marker line
	line   []byte // the marker line so far, after the prefix
}

func newMarkerFilter(out io.Writer, marker string, onLine func(string)) *markerFilter {
	return &markerFilter{out: out, marker: marker, onLine: onLine}
}

func (f *markerFilter) Write(b []byte) (int, error) {
	var pass []byte
	for _, c := range b {
		switch {
		case f.marked:
			if c == '\n' {
				// onLine may change out: what came before goes to the old one.
				if err := f.pass(pass); err != nil {
					return 0, err
				}
				pass = pass[:0]
				f.onLine(strings.TrimRight(string(f.line), "\r"))
				f.marked, f.line = false, f.line[:0]
			} else {
				f.line = append(f.line, c)
			}
		case f.inLine:
			pass = append(pass, c)
			f.inLine = c != '\n'
		case c == f.marker[len(f.held)]:
			f.held = append(f.held, c)
			if len(f.held) == len(f.marker) {
				f.marked, f.held = true, f.held[:0]
			}
		default:
			pass = append(append(pass, f.held...), c)
			f.held = f.held[:0]
			f.inLine = c != '\n'
		}
	}
	if err := f.pass(pass); err != nil {
		return 0, err
	}
	return len(b), nil
}

func (f *markerFilter) pass(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	_, err := f.out.Write(b)
	return err
}

// flush passes on what is held at the end of the output: the start of a
// last line that looked like a marker, or a marker line cut short.
func (f *markerFilter) flush() {
	if len(f.held) > 0 {
		f.out.Write(f.held)
		f.held = f.held[:0]
	}
	if f.marked {
		f.onLine(strings.TrimRight(string(f.line), "\r"))
		f.marked, f.line = false, f.line[:0]
	}
}
