package testvm

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

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
	tree := filepath.Join(dir, "tree")
	if err := os.MkdirAll(filepath.Join(tree, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tree, "sub", "data"), []byte("d"), 0o600); err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(dir, "a.cpio")
	err := WriteArchive(archive, func(w *CPIOWriter) {
		w.Dir("etc")
		w.Blob("etc/deep/er/conf", 0o644, []byte("x=1\n"))
		w.File("bin/tool", src, 0o755)
		w.Symlink("bin/alias", "tool")
		w.CharDev("dev/console", 0o600, 5, 1)
		w.Tree("pkg/testdata", tree)
	})
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("cpio", "-it", "--quiet", "-F", archive).Output()
	if err != nil {
		t.Fatalf("cpio -it: %v", err)
	}
	want := []string{"etc", "etc/deep", "etc/deep/er", "etc/deep/er/conf", "bin", "bin/tool", "bin/alias", "dev", "dev/console",
		"pkg", "pkg/testdata", "pkg/testdata/sub", "pkg/testdata/sub/data"}
	if got := strings.Fields(string(out)); !slices.Equal(got, want) {
		t.Errorf("archive lists %q, want %q (parents before their contents)", got, want)
	}

	extract := filepath.Join(dir, "x")
	os.Mkdir(extract, 0o755)
	cmd := exec.Command("cpio", "-id", "--quiet", "-F", archive, "bin/*", "etc/*", "pkg/*")
	cmd.Dir = extract
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("cpio -id: %v\n%s", err, out)
	}
	for path, want := range map[string]string{"bin/tool": "hello, five", "etc/deep/er/conf": "x=1\n", "pkg/testdata/sub/data": "d"} {
		if got, err := os.ReadFile(filepath.Join(extract, path)); err != nil || string(got) != want {
			t.Errorf("%s: %q, %v; want %q", path, got, err, want)
		}
	}
	if l, err := os.Readlink(filepath.Join(extract, "bin/alias")); err != nil || l != "tool" {
		t.Errorf("bin/alias -> %q, %v", l, err)
	}
}
