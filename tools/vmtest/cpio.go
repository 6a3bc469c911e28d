package main

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
)

// cpioWriter writes a "newc" cpio archive, the format the kernel unpacks as an
// initramfs. Parent directories are added on demand, before their contents, as
// the kernel needs them. The first error sticks and is returned by close.
type cpioWriter struct {
	w    *bufio.Writer
	ino  uint32
	dirs map[string]bool
	err  error
}

func newCPIOWriter(w io.Writer) *cpioWriter {
	return &cpioWriter{w: bufio.NewWriterSize(w, 1<<20), ino: 1, dirs: map[string]bool{"": true}}
}

// entry writes one header, its name and its data, each padded to 4 bytes.
func (c *cpioWriter) entry(name string, mode uint32, size int64, rdevMajor, rdevMinor uint32, data io.Reader) {
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

func (c *cpioWriter) write(b []byte) {
	if c.err == nil {
		_, c.err = c.w.Write(b)
	}
}

func (c *cpioWriter) pad(n int) { c.write(make([]byte, (4-n%4)%4)) }

func (c *cpioWriter) mkdirAll(dir string) {
	if dir == "." || c.dirs[dir] {
		return
	}
	c.mkdirAll(path.Dir(dir))
	c.dirs[dir] = true
	c.entry(dir, 0o040755, 0, 0, 0, nil)
}

// dir adds a directory and its parents.
func (c *cpioWriter) dir(name string) {
	c.mkdirAll(strings.TrimPrefix(path.Clean("/"+name), "/"))
}

// blob adds a regular file with the given content.
func (c *cpioWriter) blob(name string, perm uint32, data []byte) {
	c.entry(name, 0o100000|perm, int64(len(data)), 0, 0, bytes.NewReader(data))
}

// file adds a regular file copied from src on this host; symlinks are followed.
func (c *cpioWriter) file(name, src string, perm uint32) {
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

// symlink adds a symbolic link to target.
func (c *cpioWriter) symlink(name, target string) {
	c.entry(name, 0o120777, int64(len(target)), 0, 0, strings.NewReader(target))
}

// charDev adds a character device node.
func (c *cpioWriter) charDev(name string, perm, major, minor uint32) {
	c.entry(name, 0o020000|perm, 0, major, minor, nil)
}

// close writes the trailer and flushes.
func (c *cpioWriter) close() error {
	c.entry("TRAILER!!!", 0, 0, 0, 0, nil)
	if c.err == nil {
		c.err = c.w.Flush()
	}
	return c.err
}
