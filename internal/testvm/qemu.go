package testvm

import (
	"fmt"
	"strings"
)

// BootArgs are the QEMU options of a test VM's direct kernel boot: no default
// devices, no display, the serial console on stdout, and a kernel command line
// (extra appended) on which a panic reboots at once, which -no-reboot turns
// into QEMU exiting.
func BootArgs(kernel, initrd, extra string) []string {
	return []string{
		"-nodefaults", "-no-user-config", "-no-reboot",
		"-display", "none", "-serial", "stdio",
		"-kernel", kernel, "-initrd", initrd,
		"-append", Cmdline(extra),
	}
}

// Cmdline is a test VM's kernel command line, extra appended: the console on
// the first serial port, and a panic that reboots at once.
func Cmdline(extra string) string {
	cmdline := "console=ttyS0 quiet panic=-1 oops=panic mitigations=off rdinit=/init"
	if extra != "" {
		cmdline += " " + extra
	}
	return cmdline
}

// Drive is one virtio disk of a VM. The guest names them /dev/vda, /dev/vdb...
// in the order of their options.
type Drive struct {
	Path   string // the host file or block device
	Format string // "qcow2" or "raw"
	// Werror is what QEMU does when a write fails: "stop" pauses the VM on any
	// error, "enospc" (QEMU's default when empty) on ENOSPC only, "report" and
	// "ignore" never pause.
	Werror string
	AIO    string // "native", "threads" or "io_uring"; empty for QEMU's default
	Cache  string // "none" (O_DIRECT on the host), "unsafe"...; empty for QEMU's default
	// Offset is where on the disk the guest writes (Start): VMs that share
	// Path write apart. A multiple of 1 MiB.
	Offset int64
	// Shared is for a Path that other VMs write too: QEMU's image locking
	// off and shared writes on. Each QEMU caches the image's metadata, so a
	// shared qcow2 image must allocate nothing (NewSharedQCOW2Disk).
	Shared bool
}

// QEMUArgs are the -drive and -device options of the drive with id dN, a
// PCI device.
func (d Drive) QEMUArgs(n int) []string { return d.qemuArgs(n, "virtio-blk-pci") }

// qemuArgs are QEMUArgs for a device model of virtio-blk.
func (d Drive) qemuArgs(n int, model string) []string {
	id := fmt.Sprintf("d%d", n)
	opts := []string{"file=" + strings.ReplaceAll(d.Path, ",", ",,"), "format=" + d.Format, "if=none", "id=" + id}
	for _, o := range []struct{ key, value string }{{"cache", d.Cache}, {"aio", d.AIO}, {"werror", d.Werror}} {
		if o.value != "" {
			opts = append(opts, o.key+"="+o.value)
		}
	}
	device := model + ",drive=" + id
	if d.Shared {
		opts = append(opts, "file.locking=off")
		device += ",share-rw=on"
	}
	return []string{"-drive", strings.Join(opts, ","), "-device", device}
}
