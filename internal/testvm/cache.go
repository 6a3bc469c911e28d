package testvm

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"golang.org/x/sys/unix"
)

// Cache is the directory that keeps test VMs' kernels and initramfs archives
// between runs: .cache/vmtest in the module (CacheDir).
type Cache struct {
	Dir string
	// Progress, when set, is told of the slow steps: a download, an archive built.
	Progress func(format string, args ...any)
}

// CacheDir is the module's cache directory for test VMs.
func CacheDir(moduleDir string) string { return filepath.Join(moduleDir, ".cache", "vmtest") }

func (c Cache) progress(format string, args ...any) {
	if c.Progress != nil {
		c.Progress(format, args...)
	}
}

// lock takes the cache's lock of that name, which other processes building the
// same thing wait for; the returned function releases it.
func (c Cache) lock(name string) (unlock func(), err error) {
	if err := os.MkdirAll(c.Dir, 0o755); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(filepath.Join(c.Dir, "."+name+".lock"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", f.Name(), err)
	}
	return func() { f.Close() }, nil
}

// ArchiveFile is one entry of a cached archive: a copy of a host file, or a symlink.
type ArchiveFile struct {
	Guest string // its path in the guest
	Host  string // the host file copied there (mode 0755)
	Link  string // the symlink's target instead of a copy
}

// Archive returns DIR/PREFIX-KEY.cpio with fill's entries and then files, KEY
// being a hash of header and of files' guest paths and contents (not their
// host paths: a file built in a temporary directory each run still hits); it
// is written (what says what, to Progress) only when no archive has that key,
// and older ones with the prefix are removed then.
func (c Cache) Archive(prefix, header string, files []ArchiveFile, what string, fill func(*CPIOWriter)) (string, error) {
	h := sha256.New()
	io.WriteString(h, header)
	for _, f := range files {
		fmt.Fprintf(h, "%s -> %s\n", f.Guest, f.Link)
		if f.Link != "" {
			continue
		}
		if err := hashFile(h, f.Host); err != nil {
			return "", err
		}
	}
	key := hex.EncodeToString(h.Sum(nil))[:16]
	out := filepath.Join(c.Dir, prefix+"-"+key+".cpio")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	// Another process may be writing the same archive, or removing this one's stale ones.
	unlock, err := c.lock("archive-" + prefix)
	if err != nil {
		return "", err
	}
	defer unlock()
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	c.progress("building %s", what)
	stale, _ := filepath.Glob(filepath.Join(c.Dir, prefix+"-*.cpio"))
	for _, s := range stale {
		os.Remove(s)
	}
	err = WriteArchive(out, func(w *CPIOWriter) {
		if fill != nil {
			fill(w)
		}
		for _, f := range files {
			if f.Link != "" {
				w.Symlink(f.Guest, f.Link)
			} else {
				w.File(f.Guest, f.Host, 0o755)
			}
		}
	})
	return out, err
}

func hashFile(w io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

// Module returns the directory and path of the main module of the working directory.
func Module() (dir, path string, err error) {
	out, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}} {{.Path}}").Output()
	if err != nil {
		return "", "", fmt.Errorf("go list -m: %w", err)
	}
	// Outside a module, go list names no directory: " command-line-arguments".
	dir, path, _ = strings.Cut(strings.TrimRight(string(out), "\n"), " ")
	if !filepath.IsAbs(dir) {
		return "", "", errors.New("not in a Go module: run in lvwatch's module")
	}
	return dir, path, nil
}

// GoStatic runs the go command in moduleDir with cgo off, for binaries that
// run in a guest without the host's libraries.
func GoStatic(moduleDir string, args ...string) error {
	cmd := exec.Command("go", args...)
	cmd.Dir = moduleDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return nil
}
