package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"time"

	"golang.org/x/sys/unix"
)

// The guest's layout: the plan, the binaries and the packages' testdata.
const (
	guestPlanPath = "/vmtest/plan.json"
	guestBinDir   = "/vmtest/bin"
	guestPkgDir   = "/vmtest/pkg"
)

// guestMain is /init in the guest: it sets up what a booted system has, runs
// the plan and powers off, which ends QEMU. The plan's final marker line on
// the console is how the host learns the result.
func guestMain() {
	code := guestRun()
	if code != 0 {
		// Give the console a moment to drain before the machine goes away.
		time.Sleep(100 * time.Millisecond)
	}
	powerOff()
}

func guestRun() int {
	for _, m := range []struct{ fstype, target string }{
		{"proc", "/proc"}, {"sysfs", "/sys"}, {"devtmpfs", "/dev"}, {"tmpfs", "/tmp"}, {"tmpfs", "/run"},
	} {
		if err := unix.Mount(m.fstype, m.target, m.fstype, 0, ""); err != nil {
			fmt.Printf("vmtest: mount %s on %s: %v\n", m.fstype, m.target, err)
			return 1
		}
	}
	os.Setenv("PATH", guestBinDir+":/usr/sbin:/usr/bin:/sbin:/bin")
	os.Setenv("HOME", "/root")
	os.Setenv("TMPDIR", "/tmp")
	if err := os.MkdirAll("/run/lock/lvm", 0o755); err != nil {
		fmt.Printf("vmtest: %v\n", err)
		return 1
	}
	if err := runGuestCommand(busyboxPath, "--install", "-s"); err != nil {
		return 1
	}

	var p plan
	raw, err := os.ReadFile(guestPlanPath)
	if err == nil {
		err = json.Unmarshal(raw, &p)
	}
	if err != nil {
		fmt.Printf("vmtest: read the plan: %v\n", err)
		return 1
	}
	for _, m := range p.Mounts {
		err := os.MkdirAll(m.Target, 0o755)
		if err == nil {
			err = unix.Mount(m.FSType, m.Target, m.FSType, 0, m.Data)
		}
		if err != nil {
			fmt.Printf("vmtest: mount %s on %s: %v\n%sdone 1\n", m.FSType, m.Target, err, p.markerPrefix())
			return 1
		}
	}
	if p.Script != nil {
		// The script's output goes out as it wrote it, without the tty's \r before each \n.
		if t, err := unix.IoctlGetTermios(1, unix.TCGETS); err == nil {
			t.Oflag &^= unix.ONLCR
			unix.IoctlSetTermios(1, unix.TCSETS, t)
		}
	}
	if err := runGuestCommand("modprobe", append([]string{"-a"}, p.Modules...)...); err != nil {
		fmt.Printf("%sdone 1\n", p.markerPrefix())
		return 1
	}
	// The plan kills test binaries that overrun; this catches a guest stuck
	// past that (a process in uninterruptible sleep, a deadlocked kernel path).
	time.AfterFunc(p.Timeout+20*time.Second, func() {
		fmt.Printf("%swatchdog: still running %v after the time limit\n%sdone 1\n",
			p.markerPrefix(), 20*time.Second, p.markerPrefix())
		powerOff()
	})
	if p.Script != nil {
		return p.runScript(context.Background(), os.Stdout)
	}
	return p.run(context.Background(), os.Stdout)
}

func runGuestCommand(name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stdout
	err := cmd.Run()
	if err != nil {
		fmt.Printf("vmtest: %s %v: %v\n", name, args, err)
	}
	return err
}

func powerOff() {
	// Wait until the console has sent what was written (tcdrain): the result above all.
	unix.IoctlSetInt(1, unix.TCSBRK, 1)
	unix.Sync()
	err := unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
	// PID 1 must not exit: that panics the kernel and hides the message.
	fmt.Printf("vmtest: power off: %v\n", err)
	for {
		time.Sleep(time.Hour)
	}
}
