// Command writer is the /init of testvm's VMs. For each of its virtio disks it
// writes pseudo-random data with O_DIRECT, all disks at once, reads it back
// with O_DIRECT and compares, prints one line per disk on the console, and
// powers off.
//
// The host passes its parameters on the kernel command line:
//
//	testvm.bytes=N            how much each disk gets, a multiple of 1 MiB
//	testvm.offsets=O1,O2...   where on /dev/vda, /dev/vdb... it goes
//	testvm.seed=HEX           32 bytes that seed the data (ChaCha8, one stream per disk)
//	testvm.modules=M1,M2...   the modules that make the disks appear (default
//	                          virtio_pci,virtio_blk; virtio_mmio,virtio_blk on a microvm)
//
// and reads back its report (package testvm parses it):
//
//	testvm: writing 33554432 bytes to each of 2 drives
//	testvm: drive 0 vda verified 33554432 bytes at offset 0
//	testvm: drive 1 vdb failed: write at 16777216: input/output error
//	testvm: done
//
// A write or read may block for as long as QEMU keeps the VM paused: nothing
// here has a deadline, and the guest's clock stands still meanwhile anyway.
package main

import (
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lvwatch/lvwatch/internal/testvm/guest"
)

// chunk is the size of each write and read; offsets and sizes are multiples of it.
const chunk = 1 << 20

// params are what the host asked for.
type params struct {
	bytes   int64
	offsets []int64
	seed    [32]byte
	modules []string
}

// defaultModules are the disks' modules on a PC (virtio over PCI).
var defaultModules = []string{"virtio_pci", "virtio_blk"}

func main() {
	if err := run(); err != nil {
		fmt.Printf("testvm: failed: %v\n", err)
	} else {
		fmt.Println("testvm: done")
	}
	guest.PowerOff()
}

func run() error {
	if err := guest.MountAll(guest.KernelMounts); err != nil {
		return err
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	p, err := parseParams(string(cmdline))
	if err != nil {
		return err
	}
	if err := guest.Modprobe(p.modules...); err != nil {
		return err
	}
	// The host learns from this line that the guest is up (tools/testvm).
	fmt.Printf("testvm: writing %d bytes to each of %d drives\n", p.bytes, len(p.offsets))
	var wg sync.WaitGroup
	for i, off := range p.offsets {
		wg.Go(func() {
			dev := fmt.Sprintf("vd%c", 'a'+i)
			seed := p.seed
			seed[0] ^= byte(i) // each disk its own stream
			if err := writeAndVerify("/dev/"+dev, off, p.bytes, seed); err != nil {
				fmt.Printf("testvm: drive %d %s failed: %v\n", i, dev, err)
				return
			}
			fmt.Printf("testvm: drive %d %s verified %d bytes at offset %d\n", i, dev, p.bytes, off)
		})
	}
	wg.Wait()
	return nil
}

func parseParams(cmdline string) (params, error) {
	var p params
	seen := map[string]bool{}
	for _, arg := range strings.Fields(cmdline) {
		key, value, _ := strings.Cut(arg, "=")
		var err error
		switch key {
		case "testvm.bytes":
			p.bytes, err = parseChunks(value)
		case "testvm.offsets":
			p.offsets = nil // the last one counts, as for the others
			for _, s := range strings.Split(value, ",") {
				off, perr := parseChunks(s)
				if perr != nil {
					err = perr
					break
				}
				p.offsets = append(p.offsets, off)
			}
		case "testvm.modules":
			p.modules = nil
			for _, m := range strings.Split(value, ",") {
				if !validModule(m) {
					err = fmt.Errorf("bad module name %q", m)
					break
				}
				p.modules = append(p.modules, m)
			}
		case "testvm.seed":
			var b []byte
			b, err = hex.DecodeString(value)
			if err == nil && len(b) != len(p.seed) {
				err = fmt.Errorf("%d bytes, want %d", len(b), len(p.seed))
			}
			copy(p.seed[:], b)
		default:
			continue
		}
		if err != nil {
			return p, fmt.Errorf("kernel command line: %s: %w", arg, err)
		}
		seen[key] = true
	}
	for _, key := range []string{"testvm.bytes", "testvm.offsets", "testvm.seed"} {
		if !seen[key] {
			return p, fmt.Errorf("kernel command line: no %s", key)
		}
	}
	if p.bytes == 0 {
		return p, errors.New("kernel command line: testvm.bytes=0")
	}
	if p.modules == nil {
		p.modules = defaultModules
	}
	return p, nil
}

// validModule accepts a module's name as modprobe takes it, nothing that
// could be an option.
func validModule(m string) bool {
	if m == "" || len(m) > 64 {
		return false
	}
	for _, c := range m {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return m[0] != '-'
}

// parseChunks reads a byte count that must be a multiple of chunk.
func parseChunks(s string) (int64, error) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, err
	}
	if n < 0 || n%chunk != 0 {
		return 0, fmt.Errorf("%d is not a non-negative multiple of %d", n, chunk)
	}
	return n, nil
}

// writeAndVerify writes n bytes of seed's stream at offset off of dev, flushes
// them, reads them back and compares them with the stream made again.
func writeAndVerify(dev string, off, n int64, seed [32]byte) error {
	fd, err := openDisk(dev)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	size, err := unix.IoctlGetUint64(fd, unix.BLKGETSIZE64)
	if err != nil {
		return fmt.Errorf("size of %s: %w", dev, err)
	}
	if uint64(off+n) > size {
		return fmt.Errorf("%s has %d bytes: no room for %d at offset %d", dev, size, n, off)
	}
	// O_DIRECT wants aligned buffers: mmap's are page-aligned.
	want, err := unix.Mmap(-1, 0, 2*chunk, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_ANON|unix.MAP_PRIVATE)
	if err != nil {
		return err
	}
	defer unix.Munmap(want)
	want, got := want[:chunk], want[chunk:]

	data := rand.NewChaCha8(seed)
	for pos := off; pos < off+n; pos += chunk {
		data.Read(want)
		if err := pwriteFull(fd, want, pos); err != nil {
			return fmt.Errorf("write at %d: %w", pos, err)
		}
	}
	if err := unix.Fdatasync(fd); err != nil {
		return fmt.Errorf("flush: %w", err)
	}
	data = rand.NewChaCha8(seed)
	for pos := off; pos < off+n; pos += chunk {
		data.Read(want)
		if m, err := unix.Pread(fd, got, pos); err != nil || m != chunk {
			return fmt.Errorf("read at %d: %d bytes, %v", pos, m, err)
		}
		if !bytes.Equal(got, want) {
			for i := range got {
				if got[i] != want[i] {
					return fmt.Errorf("read back at %d: not what was written", pos+int64(i))
				}
			}
		}
	}
	return nil
}

// openDisk opens the disk's node, waiting a little for devtmpfs to make it.
func openDisk(dev string) (int, error) {
	for range 100 {
		fd, err := unix.Open(dev, unix.O_RDWR|unix.O_DIRECT|unix.O_CLOEXEC, 0)
		if err == nil {
			return fd, nil
		}
		if !errors.Is(err, unix.ENOENT) {
			return -1, fmt.Errorf("open %s: %w", dev, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return -1, fmt.Errorf("%s did not appear in 5s", dev)
}

func pwriteFull(fd int, b []byte, off int64) error {
	m, err := unix.Pwrite(fd, b, off)
	if err == nil && m != len(b) {
		err = fmt.Errorf("wrote %d of %d bytes", m, len(b))
	}
	return err
}
