package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
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

// TestCPIO checks the archive with the real cpio tool.
func TestCPIO(t *testing.T) {
	if _, err := exec.LookPath("cpio"); err != nil {
		t.Skip("cpio not installed")
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src")
	if err := os.WriteFile(src, []byte("hello, five"), 0o644); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(dir, "a.cpio")
	err := writeArchive(archive, func(w *cpioWriter) {
		w.dir("etc")
		w.blob("etc/deep/er/conf", 0o644, []byte("x=1\n"))
		w.file("bin/tool", src, 0o755)
		w.symlink("bin/alias", "tool")
		w.charDev("dev/console", 0o600, 5, 1)
	})
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("cpio", "-it", "--quiet", "-F", archive).Output()
	if err != nil {
		t.Fatalf("cpio -it: %v", err)
	}
	want := []string{"etc", "etc/deep", "etc/deep/er", "etc/deep/er/conf", "bin", "bin/tool", "bin/alias", "dev", "dev/console"}
	if got := strings.Fields(string(out)); !slices.Equal(got, want) {
		t.Errorf("archive lists %q, want %q (parents before their contents)", got, want)
	}

	extract := filepath.Join(dir, "x")
	os.Mkdir(extract, 0o755)
	cmd := exec.Command("cpio", "-id", "--quiet", "-F", archive, "bin/*", "etc/*")
	cmd.Dir = extract
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -id: %v\n%s", err, out)
	}
	for path, want := range map[string]string{"bin/tool": "hello, five", "etc/deep/er/conf": "x=1\n"} {
		if got, err := os.ReadFile(filepath.Join(extract, path)); err != nil || string(got) != want {
			t.Errorf("%s: %q, %v; want %q", path, got, err, want)
		}
	}
	if l, err := os.Readlink(filepath.Join(extract, "bin/alias")); err != nil || l != "tool" {
		t.Errorf("bin/alias -> %q, %v", l, err)
	}
}

func TestModuleClosure(t *testing.T) {
	k := kernel{Release: "6.1.0-test", Root: t.TempDir()}
	os.MkdirAll(k.modulesDir(), 0o755)
	dep := "kernel/drivers/md/dm-mod.ko:\n" +
		"kernel/drivers/md/dm-thin-pool.ko: kernel/drivers/md/persistent-data/dm-persistent-data.ko kernel/drivers/md/dm-mod.ko\n" +
		"kernel/drivers/block/loop.ko:\n"
	if err := os.WriteFile(filepath.Join(k.modulesDir(), "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := k.moduleClosure([]string{"dm_thin_pool", "dm-mod"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kernel/drivers/md/dm-mod.ko", "kernel/drivers/md/dm-thin-pool.ko", "kernel/drivers/md/persistent-data/dm-persistent-data.ko"}
	if !slices.Equal(got, want) {
		t.Errorf("closure %q, want %q", got, want)
	}
	if _, err := k.moduleClosure([]string{"no_such_module"}); err == nil {
		t.Error("a missing module did not fail")
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
