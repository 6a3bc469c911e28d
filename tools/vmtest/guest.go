package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/lvwatch/lvwatch/internal/testvm/guest"
)

// The guest's layout: the plan, the binaries and the packages' testdata.
const (
	guestPlanPath = "/vmtest/plan.json"
	guestBinDir   = "/vmtest/bin"
	guestPkgDir   = "/vmtest/pkg"
)

// firstMounts are what the guest mounts before it reads the plan.
var firstMounts = append(slices.Clone(guest.KernelMounts), guest.Mount{FSType: "tmpfs", Target: "/tmp"}, guest.Mount{FSType: "tmpfs", Target: "/run"})

// guestMain is /init in the guest: it sets up what a booted system has, runs
// the plan and powers off, which ends QEMU. The plan's final marker line on
// the console is how the host learns the result.
func guestMain() {
	code := guestRun()
	if code != 0 {
		// Give the console a moment to drain before the machine goes away.
		time.Sleep(100 * time.Millisecond)
	}
	guest.PowerOff()
}

func guestRun() int {
	if err := guest.MountAll(firstMounts); err != nil {
		fmt.Printf("vmtest: %v\n", err)
		return 1
	}
	os.Setenv("PATH", guestBinDir+":/usr/sbin:/usr/bin:/sbin:/bin")
	os.Setenv("HOME", "/root")
	os.Setenv("TMPDIR", "/tmp")
	if err := os.MkdirAll("/run/lock/lvm", 0o755); err != nil {
		fmt.Printf("vmtest: %v\n", err)
		return 1
	}
	if err := runGuestCommand(guest.Busybox, "--install", "-s"); err != nil {
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
	if err := guest.MountAll(p.Mounts); err != nil {
		fmt.Printf("vmtest: %v\n%sdone 1\n", err, p.markerPrefix())
		return 1
	}
	if p.Script != nil {
		// The script's output goes out as it wrote it, without the tty's \r before each \n.
		if t, err := unix.IoctlGetTermios(1, unix.TCGETS); err == nil {
			t.Oflag &^= unix.ONLCR
			unix.IoctlSetTermios(1, unix.TCSETS, t)
		}
	}
	if err := guest.Modprobe(p.Modules...); err != nil {
		fmt.Printf("vmtest: %v\n%sdone 1\n", err, p.markerPrefix())
		return 1
	}
	// The plan kills test binaries that overrun; this catches a guest stuck
	// past that (a process in uninterruptible sleep, a deadlocked kernel path).
	time.AfterFunc(p.Timeout+20*time.Second, func() {
		fmt.Printf("%swatchdog: still running %v after the time limit\n%sdone 1\n",
			p.markerPrefix(), 20*time.Second, p.markerPrefix())
		guest.PowerOff()
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
