// Package guest is what the /init of a test VM (tools/vmtest's guest, testvm's
// writer) does besides its job: mount the kernel's file systems, load modules
// and power off, which ends QEMU.
package guest

import (
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Busybox is busybox's path, the same in the guest as on the host (Debian's
// busybox-static): the guest's shell and modprobe.
const Busybox = "/bin/busybox"

// Mount is one file system for init to mount.
type Mount struct{ FSType, Target, Data string }

// KernelMounts are the file systems every test guest mounts first.
var KernelMounts = []Mount{{"proc", "/proc", ""}, {"sysfs", "/sys", ""}, {"devtmpfs", "/dev", ""}}

// MountAll mounts each in turn, creating its target.
func MountAll(mounts []Mount) error {
	for _, m := range mounts {
		err := os.MkdirAll(m.Target, 0o755)
		if err == nil {
			err = unix.Mount(m.FSType, m.Target, m.FSType, 0, m.Data)
		}
		if err != nil {
			return fmt.Errorf("mount %s on %s: %w", m.FSType, m.Target, err)
		}
	}
	return nil
}

// Modprobe loads the modules and what they depend on with busybox's modprobe,
// its output on the console.
func Modprobe(modules ...string) error {
	cmd := exec.Command(Busybox, append([]string{"modprobe", "-a"}, modules...)...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("modprobe %s: %w", strings.Join(modules, " "), err)
	}
	return nil
}

// PowerOff ends the VM once the console has sent what was written to it. It
// never returns: PID 1 must not exit, which panics the kernel and hides the
// message.
func PowerOff() {
	unix.IoctlSetInt(1, unix.TCSBRK, 1) // tcdrain: the result above all
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	fmt.Printf("power off: %v\n", err)
	for {
		time.Sleep(time.Hour)
	}
}
