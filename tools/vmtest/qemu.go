package main

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	"github.com/lvwatch/lvwatch/internal/testvm"
)

// vm is one guest boot.
type vm struct {
	kernel  string   // bzImage
	initrd  string   // the concatenated base and payload archives
	disks   []string // raw scratch images, /dev/vda, /dev/vdb... in the guest
	timeout time.Duration
	shared  bool // other guests write the same disks: no host cache, no lock
	memMiB  int  // guestMemMiB when 0
}

// tcgArgs are measured on the CI machines: KVM does not work there, so QEMU
// translates; -smp 2 with a thread per vCPU.
var tcgArgs = []string{"-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2"}

// The guest's memory: what the tests need, and with -qemu room for a nested
// VM (internal/testvm's 256 MiB) besides the larger initramfs.
const (
	guestMemMiB     = 1024
	qemuGuestMemMiB = 2048
)

// boot runs the guest with its serial console on console until it powers
// off, and kills it when the time limit passes. Its result is on the console.
func (v vm) boot(ctx context.Context, console io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, v.timeout)
	defer cancel()
	args := append(testvm.BootArgs(v.kernel, v.initrd, ""), tcgArgs...)
	args = append(args, "-m", fmt.Sprint(cmp.Or(v.memMiB, guestMemMiB)))
	args = append(args, v.diskArgs()...)
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	cmd.Stdout, cmd.Stderr = console, os.Stderr
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("the guest was still running after the %v limit (-timeout): killed it", v.timeout)
	}
	if err != nil {
		return fmt.Errorf("qemu: %w", err)
	}
	return nil
}

// diskArgs are the QEMU options of the scratch disks. A guest alone caches
// them at will; guests sharing them write through to the file (O_DIRECT on
// the host, so each sees the other's writes) with QEMU's image locking off
// and the device's shared writes on.
func (v vm) diskArgs() []string {
	var args []string
	for i, path := range v.disks {
		d := testvm.Drive{Path: path, Format: "raw", Cache: "unsafe"}
		if v.shared {
			d.Cache, d.AIO, d.Shared = "none", "threads", true
		}
		args = append(args, d.QEMUArgs(i)...)
	}
	return args
}

// scratchDisks creates n sparse raw images of size bytes in dir.
func scratchDisks(dir string, n int, size int64) ([]string, error) {
	var disks []string
	for i := range n {
		p := filepath.Join(dir, fmt.Sprintf("scratch%d.raw", i))
		f, err := os.Create(p)
		if err != nil {
			return nil, err
		}
		err = f.Truncate(size)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return nil, err
		}
		disks = append(disks, p)
	}
	return disks, nil
}

// concatFiles writes the files one after another into out: the kernel
// unpacks concatenated cpio archives in order.
func concatFiles(out string, files ...string) error {
	dst, err := os.Create(out)
	if err != nil {
		return err
	}
	for _, f := range files {
		src, err := os.Open(f)
		if err != nil {
			dst.Close()
			return err
		}
		_, err = io.Copy(dst, src)
		src.Close()
		if err != nil {
			dst.Close()
			return err
		}
	}
	return dst.Close()
}
