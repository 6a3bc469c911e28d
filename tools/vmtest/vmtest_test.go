package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestTally(t *testing.T) {
	p := &plan{Nonce: "abcd"}
	tl := newTally(p.markerPrefix())
	out := strings.Join([]string{
		"=== RUN   TestA",
		"--- PASS: TestA (0.01s)",
		"=== RUN   TestB",
		"    --- PASS: TestB/sub (0.00s)", // subtests are not counted
		"--- FAIL: TestB (0.02s)",
		"--- SKIP: TestC (0.00s)",
		"vmtest[abcd]: example.com/a exit 1 in 1.0s",
		"panic: test timed out after 10s", // a binary that dies without a --- FAIL line
		"vmtest[abcd]: example.com/b exit 2 in 10.0s",
		"vmtest[ffff]: done 0", // another run's marker, printed by a test, is ignored
		"--- PASS: TestD (0.01s)",
		"vmtest[abcd]: example.com/c exit 0 in 0.1s",
		"vmtest[abcd]: done 1",
	}, "\r\n") + "\r\n"
	// The console delivers lines in arbitrary pieces.
	for len(out) > 0 {
		n := min(7, len(out))
		tl.Write([]byte(out[:n]))
		out = out[n:]
	}
	if tl.passed != 2 || tl.failed != 2 || tl.skipped != 1 || !tl.done || tl.result != 1 || tl.ok() {
		t.Errorf("tally %+v: want 2 passed, 2 failed, 1 skipped, done with 1", tl)
	}
	if got := tl.summary(); got != "2 passed, 2 failed, 1 skipped" {
		t.Errorf("summary %q", got)
	}
}

func TestTallyNeedsTheFinalMarker(t *testing.T) {
	tl := newTally("vmtest[abcd]: ")
	tl.Write([]byte("--- PASS: TestA (0.01s)\n"))
	if tl.ok() {
		t.Error("a run that never reported its end is ok")
	}
}

// TestTaggedPackages runs the real go list on a module with one tagged test file.
func TestTaggedPackages(t *testing.T) {
	dir := t.TempDir()
	files := map[string]string{
		"go.mod":               "module example.com/m\n\ngo 1.21\n",
		"a/a.go":               "package a\n",
		"a/a_test.go":          "package a\n",
		"b/b.go":               "package b\n",
		"b/b_test.go":          "package b\n",
		"b/b_vmtest_test.go":   "//go:build vmtest\n\npackage b\n",
		"c/c.go":               "package c\n",
		"c/c_x_vmtest_test.go": "//go:build vmtest\n\npackage c_test\n",
	}
	for name, content := range files {
		os.MkdirAll(filepath.Join(dir, filepath.Dir(name)), 0o755)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	pkgs, err := taggedPackages(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, p := range pkgs {
		got = append(got, p.ImportPath)
	}
	if want := []string{"example.com/m/b", "example.com/m/c"}; !slices.Equal(got, want) {
		t.Errorf("tagged packages %q, want %q", got, want)
	}
	if n := binaryName("example.com/m", "example.com/m/internal/dm"); n != "internal_dm.test" {
		t.Errorf("binaryName = %q", n)
	}
}

func TestParseArgs(t *testing.T) {
	o, err := parseArgs(nil, io.Discard)
	if err != nil || o.script != "" || o.timeout != testTimeout || o.diskSize != testDiskSize || o.disks != 2 {
		t.Errorf("no arguments: %+v, %v; want the tests' defaults", o, err)
	}
	o, err = parseArgs([]string{"-script", "s.sh", "-disks", "3", "a", "-b"}, io.Discard)
	if err != nil || o.script != "s.sh" || o.timeout != scriptTimeout || o.diskSize != scriptDiskSize || o.disks != 3 || !slices.Equal(o.args, []string{"a", "-b"}) {
		t.Errorf("-script: %+v, %v; want the script's defaults and its arguments", o, err)
	}
	o, err = parseArgs([]string{"-timeout", "90s", "-disk-size", "512MiB", "-script", "s.sh"}, io.Discard)
	if err != nil || o.timeout != 90*time.Second || o.diskSize != 512<<20 {
		t.Errorf("explicit -timeout and -disk-size: %+v, %v", o, err)
	}
	o, err = parseArgs([]string{"-run", "TestX", "-disk-size", "2G"}, io.Discard)
	if err != nil || o.run != "TestX" || o.diskSize != 2<<30 || o.timeout != testTimeout {
		t.Errorf("tests with -disk-size: %+v, %v", o, err)
	}
	for _, bad := range [][]string{
		{"-script", "s.sh", "-run", "TestX"},
		{"-script", "s.sh", "-bench"},
		{"-script", ""},
		{"stray"},
		{"-disks", "27"},
		{"-disks", "-1"},
		{"-disk-size", "1000"},
		{"-disk-size", "lots"},
		{"-timeout", "0s"},
		{"-no-such-flag"},
	} {
		if o, err := parseArgs(bad, io.Discard); err == nil {
			t.Errorf("%q: accepted as %+v", bad, o)
		}
	}
	if _, err := parseArgs([]string{"-h"}, io.Discard); !errors.Is(err, flag.ErrHelp) {
		t.Errorf("-h: %v", err)
	}
}

func TestGuestLimit(t *testing.T) {
	for timeout, want := range map[time.Duration]time.Duration{
		6 * time.Minute:  5*time.Minute + 20*time.Second, // as it always was
		20 * time.Minute: 19*time.Minute + 20*time.Second,
		60 * time.Second: 45 * time.Second, // short limits keep room for the run
	} {
		if got := guestLimit(timeout); got != want {
			t.Errorf("guestLimit(%v) = %v, want %v", timeout, got, want)
		}
	}
}

func TestScriptPlan(t *testing.T) {
	o, err := parseArgs([]string{"-script", "../x/check.sh", "-disks", "3", "one", "two"}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	p := scriptPlan(o, "abcd")
	if p.Script == nil || p.Script.Path != "/vmtest/script/check.sh" || !slices.Equal(p.Script.Args, []string{"one", "two"}) || p.Script.Dir != "/root" {
		t.Errorf("script %+v", p.Script)
	}
	if len(p.Tests) != 0 || p.Timeout != guestLimit(scriptTimeout) || !slices.Equal(p.Modules, guestModules) {
		t.Errorf("plan %+v", p)
	}
	if !slices.Contains(p.Env, "LVWATCH_SCRATCH_DISKS=/dev/vda /dev/vdb /dev/vdc") || !slices.Contains(p.Env, "LVWATCH_BIN=/vmtest/bin/lvwatch") {
		t.Errorf("environment %q", p.Env)
	}
	var targets []string
	for _, m := range p.Mounts {
		targets = append(targets, m.Target)
	}
	for _, want := range []string{"/sys/fs/bpf", "/sys/kernel/tracing", "/dev/shm"} {
		if !slices.Contains(targets, want) {
			t.Errorf("mounts %q: no %s", targets, want)
		}
	}
	// The plan travels as JSON.
	raw, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var back plan
	if err := json.Unmarshal(raw, &back); err != nil || !reflect.DeepEqual(&back, p) {
		t.Errorf("round trip: %+v, %v; want %+v", back, err, p)
	}
}

// TestRunScript runs scripts with this host's sh the way the guest does.
func TestRunScript(t *testing.T) {
	dir := t.TempDir()
	script := func(name, body string) *plan {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return &plan{Nonce: "abcd", Timeout: time.Minute, Env: []string{"VMTEST_X=x"},
			Script: &guestScript{Path: path, Args: []string{"a b", "c"}, Dir: dir}}
	}
	for _, tc := range []struct {
		name, body string
		code       int
		out        string
	}{
		{"exit.sh", `echo "$# $1|$2 $VMTEST_X $(basename "$PWD")"; echo err >&2; exit 3`, 3, "2 a b|c x " + filepath.Base(dir) + "\nerr\n"},
		{"ok.sh", "true", 0, ""},
		{"signal.sh", "kill -TERM $$", 128 + 15, ""},
	} {
		var out strings.Builder
		p := script(tc.name, tc.body)
		code := p.runScript(context.Background(), &out)
		want := fmt.Sprintf("%sscript exit %d in ", p.markerPrefix(), tc.code)
		got, marker, _ := strings.Cut(out.String(), p.markerPrefix())
		if code != tc.code || got != tc.out || !strings.HasPrefix(p.markerPrefix()+marker, want) {
			t.Errorf("%s: code %d, output %q; want %d, %q then %q...", tc.name, code, out.String(), tc.code, tc.out, want)
		}
	}

	// At the limit the script and what it started are killed.
	p := script("hang.sh", "sleep 60 & sleep 60")
	p.Timeout = 300 * time.Millisecond
	var out strings.Builder
	start := time.Now()
	code := p.runScript(context.Background(), &out)
	if code != scriptExitCode || !strings.Contains(out.String(), p.markerPrefix()+"script killed") || time.Since(start) > 3*time.Second {
		t.Errorf("hung script: code %d after %v, output %q", code, time.Since(start), out.String())
	}
}

func TestMarkerFilter(t *testing.T) {
	const m = "vmtest[abcd]: "
	console := "booting\r\nvmtest is a word\nvmtest[abcd]: script exit 3 in 0.1s\r\n" +
		"vmtest[ffff]: fake\nvm\nvmtest[abcd]: done 1\npartial line, no newline, vmtest[abcd]: in the middle\nvmtest[ab"
	var out strings.Builder
	var markers []string
	f := newMarkerFilter(&out, m, func(l string) { markers = append(markers, l) })
	// The console delivers lines in arbitrary pieces, and what is not a marker passes at once.
	for i := 0; i < len(console); i += 5 {
		before := out.Len()
		f.Write([]byte(console[i:min(i+5, len(console))]))
		if i == 0 && out.Len() == before {
			t.Error("the first bytes were held back")
		}
	}
	f.flush()
	wantOut := "booting\r\nvmtest is a word\nvmtest[ffff]: fake\nvm\npartial line, no newline, vmtest[abcd]: in the middle\nvmtest[ab"
	if out.String() != wantOut {
		t.Errorf("passed %q, want %q", out.String(), wantOut)
	}

	// A marker may send what follows elsewhere, what came before it staying where it was.
	var before, after strings.Builder
	f = newMarkerFilter(&before, m, nil)
	f.onLine = func(string) { f.out = &after }
	f.Write([]byte("a\nvmtest[abcd]: script exit 0 in 0.1s\npower down\n"))
	if before.String() != "a\n" || after.String() != "power down\n" {
		t.Errorf("before the marker %q, after %q", before.String(), after.String())
	}
	if want := []string{"script exit 3 in 0.1s", "done 1"}; !slices.Equal(markers, want) {
		t.Errorf("markers %q, want %q", markers, want)
	}

	var r scriptResult
	for _, l := range markers {
		r.marker(l)
	}
	if code, err := r.result(nil); code != 3 || err != nil {
		t.Errorf("result %d, %v; want 3", code, err)
	}
	r = scriptResult{}
	r.marker("watchdog: still running 20s after the time limit")
	if _, err := r.result(nil); err == nil || !strings.Contains(err.Error(), "watchdog") {
		t.Errorf("no exit marker: %v", err)
	}
	if _, err := (&scriptResult{}).result(nil); err == nil {
		t.Error("a guest that reported nothing has a result")
	}
}

func TestParseArgsGuests(t *testing.T) {
	o, err := parseArgs([]string{"-script", "s.sh"}, io.Discard)
	if err != nil || o.guests != 1 {
		t.Fatalf("default: guests %d, %v; want 1", o.guests, err)
	}
	o, err = parseArgs([]string{"-guests", "2", "-script", "s.sh", "64"}, io.Discard)
	if err != nil || o.guests != 2 || !slices.Equal(o.args, []string{"64"}) {
		t.Fatalf("-guests 2: %+v, %v", o, err)
	}
	for _, bad := range [][]string{
		{"-guests", "2"},                     // no -script
		{"-guests", "1"},                     // no -script either
		{"-guests", "0", "-script", "s.sh"},  // too few
		{"-guests", "3", "-script", "s.sh"},  // too many
		{"-guests", "-1", "-script", "s.sh"}, // negative
	} {
		if _, err := parseArgs(bad, io.Discard); err == nil {
			t.Errorf("parseArgs(%q): no error", bad)
		}
	}
}

func TestParseArgsQEMU(t *testing.T) {
	o, err := parseArgs([]string{"-qemu", "-script", "s.sh"}, io.Discard)
	if err != nil || !o.qemu {
		t.Fatalf("-qemu -script: %+v, %v", o, err)
	}
	if o, err := parseArgs([]string{"-script", "s.sh"}, io.Discard); err != nil || o.qemu {
		t.Errorf("-script alone: qemu %t, %v; want false", o.qemu, err)
	}
	if _, err := parseArgs([]string{"-qemu"}, io.Discard); err == nil {
		t.Error("-qemu without -script: no error")
	}
}

func TestDiskArgs(t *testing.T) {
	v := vm{disks: []string{"/w/a.raw", "/w/b.raw"}}
	want := []string{
		"-drive", "file=/w/a.raw,format=raw,if=none,id=d0,cache=unsafe",
		"-device", "virtio-blk-pci,drive=d0",
		"-drive", "file=/w/b.raw,format=raw,if=none,id=d1,cache=unsafe",
		"-device", "virtio-blk-pci,drive=d1",
	}
	if got := v.diskArgs(); !slices.Equal(got, want) {
		t.Errorf("alone: %q, want %q", got, want)
	}
	v.shared = true
	want = []string{
		"-drive", "file=/w/a.raw,format=raw,if=none,id=d0,cache=none,aio=threads,file.locking=off",
		"-device", "virtio-blk-pci,drive=d0,share-rw=on",
		"-drive", "file=/w/b.raw,format=raw,if=none,id=d1,cache=none,aio=threads,file.locking=off",
		"-device", "virtio-blk-pci,drive=d1,share-rw=on",
	}
	if got := v.diskArgs(); !slices.Equal(got, want) {
		t.Errorf("shared: %q, want %q", got, want)
	}
}

func TestFirstFailure(t *testing.T) {
	for _, c := range []struct {
		codes []int
		want  int
	}{
		{nil, 0},
		{[]int{0, 0}, 0},
		{[]int{0, 3}, 3},
		{[]int{1, scriptExitCode}, 1}, // the other guest stopped after the first failed
		{[]int{scriptExitCode, 0}, scriptExitCode},
	} {
		if got := firstFailure(c.codes); got != c.want {
			t.Errorf("firstFailure(%v) = %d, want %d", c.codes, got, c.want)
		}
	}
}

func TestLinePrefixer(t *testing.T) {
	var mu sync.Mutex
	var out strings.Builder
	a := &linePrefixer{mu: &mu, out: &out, prefix: "[1] "}
	b := &linePrefixer{mu: &mu, out: &out, prefix: "[2] "}
	a.Write([]byte("one, "))
	b.Write([]byte("two\nthree"))
	a.Write([]byte("still one\nfour\n\nfive"))
	b.Write([]byte(" and more\n"))
	a.flush()
	b.flush()
	want := "[2] two\n[1] one, still one\n[1] four\n[1] \n[2] three and more\n[1] five\n"
	if out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
}
