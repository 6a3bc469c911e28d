package resume_test

import (
	"context"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/digitalocean/go-libvirt"
	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/resume"
	"github.com/lvwatch/lvwatch/internal/testutil"
	"github.com/lvwatch/lvwatch/internal/testvm"
	"github.com/lvwatch/lvwatch/internal/watch"
)

// startLibvirt runs Debian's libvirtd for the test, its sockets in a directory
// of the test's (a libvirtd of the host's own is not touched), and returns its URI.
func startLibvirt(t *testing.T) string {
	t.Helper()
	testutil.RequireRoot(t)
	for _, program := range []string{"libvirtd", "virtlogd"} {
		if _, err := exec.LookPath(program); err != nil {
			testutil.SkipOrFail(t, fmt.Sprintf("the libvirt test needs %s (tools/deps.sh installs it): %v", program, err))
		}
	}
	dir, err := os.MkdirTemp("", "lvwatch-libvirt-") // short: a socket path has at most 107 bytes
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	conf := filepath.Join(dir, "libvirtd.conf")
	if err := os.WriteFile(conf, []byte(fmt.Sprintf("unix_sock_dir = %q\nauth_unix_rw = \"none\"\n", dir)), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll("/var/log/libvirt", 0o700); err != nil { // where both daemons log, made by the package's postinst on a booted system
		t.Fatal(err)
	}
	// The qemu driver logs its VMs' output through virtlogd: one runs already, or this one.
	exec.Command("virtlogd", "-d").Run()
	// Its own pid file: the default one, /run/libvirtd.pid, may be a running libvirtd's.
	daemon := exec.Command("libvirtd", "-f", conf, "-p", filepath.Join(dir, "libvirtd.pid"))
	var log testutil.LogBuffer
	daemon.Stdout, daemon.Stderr = &log, &log
	if err := daemon.Start(); err != nil {
		t.Fatalf("libvirtd: %v", err)
	}
	exited := make(chan struct{})
	go func() { daemon.Wait(); close(exited) }()
	t.Cleanup(func() {
		daemon.Process.Signal(os.Interrupt)
		<-exited
	})
	// The socket's file exists from its bind, before libvirtd listens: wait
	// for a connection to be taken.
	sock := filepath.Join(dir, "libvirt-sock")
	testutil.WaitFor(t, time.Minute, "libvirtd to take connections on "+sock, func() bool {
		select {
		case <-exited:
			t.Fatalf("libvirtd exited (%v):\n%s", daemon.ProcessState, log.String())
		default:
		}
		c, err := net.Dial("unix", sock)
		if err != nil {
			return false
		}
		c.Close()
		return true
	})
	return "qemu:///system?socket=" + url.QueryEscape(sock)
}

// domainXML is a libvirt domain booting the test VM kit (TCG) with one virtio
// disk as oVirt defines them: qcow2, cache none, native AIO, stop on error.
func domainXML(name string, kit testvm.Kit, dev, console string, dataMiB int) string {
	opt := testvm.Options{DataMiB: dataMiB, Drives: []testvm.Drive{{Path: dev}}}
	return fmt.Sprintf(`<domain type='qemu'>
  <name>%s</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel>%s</kernel><initrd>%s</initrd><cmdline>%s</cmdline></os>
  <on_poweroff>destroy</on_poweroff><on_reboot>destroy</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <disk type='block' device='disk'>
      <driver name='qemu' type='qcow2' cache='none' io='native' error_policy='stop'/>
      <source dev='%s'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='file'><source path='%s'/><target port='0'/></serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
</domain>`, name, kit.Kernel, kit.Initramfs, testvm.Cmdline(opt.WriterParams()), dev, console)
}

// The same story through libvirt: a domain paused on ENOSPC (state paused, I/O
// error; its disk error no space) is left while its LV is full and resumed once
// it has grown; its data reads back intact.
func TestResumeThroughLibvirt(t *testing.T) {
	kit := testvm.NewKit(t)
	uri := startLibvirt(t)
	u, _ := url.Parse(uri)
	conn, err := libvirt.ConnectToURI(u)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Disconnect()

	disk := newDisk(t, 16)
	// The agent hears of the pause from libvirt's event.
	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	failedOn := make(chan string, 8)
	go resume.Libvirt{URI: uri}.WatchPauses(watchCtx, func(path string) { failedOn <- path })
	dir := t.TempDir()
	os.Chmod(dir, 0o755) // QEMU runs as libvirt-qemu and writes the console log here
	console := filepath.Join(dir, "console.log")
	name := fmt.Sprintf("lvwatch-test-%d", os.Getpid())
	// About 40 s on the CI machines: its /dev/kvm exists but does not serve
	// libvirt's QEMU, and libvirt probes QEMU's capabilities again and again.
	dom, err := conn.DomainCreateXML(domainXML(name, kit, disk.Path, console, 32), 0)
	if err != nil {
		t.Fatalf("define the domain: %v", err)
	}
	t.Cleanup(func() { conn.DomainDestroy(dom) })
	state := func() (libvirt.DomainState, int32) {
		st, reason, err := conn.DomainGetState(dom, 0)
		if err != nil {
			return libvirt.DomainNostate, 0 // gone: powered off and destroyed
		}
		return libvirt.DomainState(st), reason
	}
	testutil.WaitFor(t, 2*time.Minute, "the domain paused on an I/O error", func() bool {
		st, reason := state()
		return st == libvirt.DomainPaused && libvirt.DomainPausedReason(reason) == libvirt.DomainPausedIoerror
	})

	select {
	case path := <-failedOn:
		if path != disk.Path {
			t.Fatalf("the I/O error event names %s, want %s", path, disk.Path)
		}
	case <-time.After(time.Minute):
		t.Fatal("no I/O error event from libvirt")
	}

	src := []resume.Source{resume.Libvirt{URI: uri}}
	dev, err := watch.DevOf(disk.Path)
	if err != nil {
		t.Fatal(err)
	}
	grown := func(d resume.Drive) bool { return d.Dev == dev }
	only := func(out []resume.Outcome) resume.Outcome {
		t.Helper()
		if len(out) != 1 || out[0].VM != name {
			t.Fatalf("outcomes: %+v", out)
		}
		return out[0]
	}
	if o := only(resume.Run(context.Background(), src, []watch.Dev{dev}, grown, zerolog.Nop())); o.Action != resume.Left || !strings.Contains(o.Why, "vda on "+disk.Path) {
		t.Fatalf("before the growth: %+v", o)
	}
	disk.Grow(t, 64<<20)
	if o := only(resume.Run(context.Background(), src, []watch.Dev{dev}, grown, zerolog.Nop())); o.Action != resume.Resumed {
		t.Fatalf("after the growth: %+v", o)
	}
	testutil.WaitFor(t, 3*time.Minute, "the domain to finish", func() bool { st, _ := state(); return st == libvirt.DomainNostate })
	out, err := os.ReadFile(console)
	if err != nil {
		t.Fatal(err)
	}
	if r := testvm.ParseReport(string(out), 1); !r.Done || !r.Drives[0].Verified {
		t.Fatalf("the guest did not verify its data:\n%s", out)
	}
}
