package testvm

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// CPIOWriter writes a "newc" cpio archive, the format the kernel unpacks as an
// initramfs. Parent directories are added on demand, before their contents, as
// the kernel needs them. The first error sticks and is returned by Close.
type CPIOWriter struct {
	w    *bufio.Writer
	ino  uint32
	dirs map[string]bool
	err  error
}

// NewCPIOWriter starts an archive on w.
func NewCPIOWriter(w io.Writer) *CPIOWriter {
	return &CPIOWriter{w: bufio.NewWriterSize(w, 1<<20), ino: 1, dirs: map[string]bool{"": true}}
}

// entry writes one header, its name and its data, each padded to 4 bytes.
func (c *CPIOWriter) entry(name string, mode uint32, size int64, rdevMajor, rdevMinor uint32, data io.Reader) {
	if c.err != nil {
		return
	}
	name = strings.TrimPrefix(path.Clean("/"+name), "/")
	if name != "TRAILER!!!" {
		c.mkdirAll(path.Dir(name))
	}
	c.ino++
	_, c.err = fmt.Fprintf(c.w, "070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, 1, 0, size, 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	if c.err != nil {
		return
	}
	c.write([]byte(name + "\x00"))
	c.pad(110 + len(name) + 1)
	if data != nil {
		var n int64
		n, c.err = io.Copy(c.w, data)
		if c.err == nil && n != size {
			c.err = fmt.Errorf("cpio: %s: wrote %d bytes, expected %d", name, n, size)
		}
	}
	c.pad(int(size))
}

func (c *CPIOWriter) write(b []byte) {
	if c.err == nil {
		_, c.err = c.w.Write(b)
	}
}

func (c *CPIOWriter) pad(n int) { c.write(make([]byte, (4-n%4)%4)) }

func (c *CPIOWriter) mkdirAll(dir string) {
	if dir == "." || c.dirs[dir] {
		return
	}
	c.mkdirAll(path.Dir(dir))
	c.dirs[dir] = true
	c.entry(dir, 0o040755, 0, 0, 0, nil)
}

// Dir adds a directory and its parents.
func (c *CPIOWriter) Dir(name string) {
	c.mkdirAll(strings.TrimPrefix(path.Clean("/"+name), "/"))
}

// InitRoot adds the directories init mounts file systems on, and /dev/console,
// which the kernel opens as init's standard streams before anything is mounted.
func (c *CPIOWriter) InitRoot(dirs ...string) {
	for _, d := range dirs {
		c.Dir(d)
	}
	c.CharDev("dev/console", 0o600, 5, 1)
}

// Blob adds a regular file with the given content.
func (c *CPIOWriter) Blob(name string, perm uint32, data []byte) {
	c.entry(name, 0o100000|perm, int64(len(data)), 0, 0, bytes.NewReader(data))
}

// File adds a regular file copied from src on this host; symlinks are followed.
func (c *CPIOWriter) File(name, src string, perm uint32) {
	if c.err != nil {
		return
	}
	f, err := os.Open(src)
	if err != nil {
		c.err = err
		return
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		c.err = err
		return
	}
	c.entry(name, 0o100000|perm, st.Size(), 0, 0, f)
}

// Tree adds the host file or directory host at guest, with everything under
// it; only directories and regular files are copied.
func (c *CPIOWriter) Tree(guest, host string) {
	err := filepath.WalkDir(host, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(host, p)
		g := filepath.Join(guest, rel)
		switch {
		case d.IsDir():
			c.Dir(g)
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			c.File(g, p, uint32(info.Mode().Perm()))
		}
		return nil
	})
	if err != nil && c.err == nil {
		c.err = err
	}
}

// Symlink adds a symbolic link to target.
func (c *CPIOWriter) Symlink(name, target string) {
	c.entry(name, 0o120777, int64(len(target)), 0, 0, strings.NewReader(target))
}

// CharDev adds a character device node.
func (c *CPIOWriter) CharDev(name string, perm, major, minor uint32) {
	c.entry(name, 0o020000|perm, 0, major, minor, nil)
}

// Close writes the trailer and flushes.
func (c *CPIOWriter) Close() error {
	c.entry("TRAILER!!!", 0, 0, 0, 0, nil)
	if c.err == nil {
		c.err = c.w.Flush()
	}
	return c.err
}

// WriteArchive writes the archive fill makes to out, through a temporary file
// renamed into place, so that out is never a partial archive.
func WriteArchive(out string, fill func(*CPIOWriter)) error {
	f, err := os.CreateTemp(filepath.Dir(out), ".tmp-*.cpio")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	w := NewCPIOWriter(f)
	fill(w)
	err = w.Close()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return os.Rename(f.Name(), out)
}
