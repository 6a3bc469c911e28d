package main

import (
	"encoding/json"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/lvwatch/lvwatch/internal/testvm"
	"github.com/lvwatch/lvwatch/internal/testvm/guest"
)

// What the guest gets from this host besides the kernel: busybox for a shell
// and modprobe, and lvm2's programs with the shared libraries they load.
var (
	guestPrograms = []string{"/usr/sbin/lvm", "/usr/sbin/dmsetup"}
	guestModules  = []string{"virtio_pci", "virtio_blk", "loop", "dm_mod", "dm_snapshot", "dm_thin_pool"}
	// -script adds these, from this host's PATH, with their libraries.
	scriptPrograms = []string{"qemu-img", "qemu-io"}
	// -qemu adds QEMU for a nested VM (tools/testvm) and the files it loads
	// for internal/testvm's machines with -kernel: for q35 SeaBIOS and the
	// option ROMs of the direct kernel boot, for microvm qboot (a symlink
	// to qboot.rom, copied as a file); and Debian's TCG accelerator, a
	// module in QEMU 7.2. QEMU finds them relative to its binary, /usr/bin.
	qemuPrograms  = []string{"qemu-system-x86_64"}
	qemuDataFiles = []string{
		"/usr/share/seabios/bios-256k.bin",
		"/usr/share/qemu/linuxboot_dma.bin",
		"/usr/share/qemu/kvmvapic.bin",
		"/usr/share/qemu/bios-microvm.bin",
		"/usr/lib/x86_64-linux-gnu/qemu/accel-tcg-x86_64.so",
	}
)

// lvmdbusdProfile is the command profile lvm2 ships for lvmdbusd: the SPM's lvm shell reports through it.
const lvmdbusdProfile = "/etc/lvm/profile/lvmdbusd.profile"

// guestLVMConf is the guest's /etc/lvm/lvm.conf: there is no udev in the guest,
// so lvm creates the /dev/mapper nodes itself and waits for nobody. Tests that
// run lvm bring their own stricter configuration through LVM_SYSTEM_DIR.
const guestLVMConf = `devices {
	obtain_device_list_from_udev = 0
	external_device_info_source = "none"
	use_devicesfile = 0
	filter = [ "a|^/dev/vd|", "a|^/dev/loop|", "r|.*|" ]
}
activation {
	udev_sync = 0
	udev_rules = 0
	verify_udev_operations = 1
	monitoring = 0
}
global {
	use_aio = 0
	event_activation = 0
}
backup {
	backup = 0
	archive = 0
}
`

// baseFormat changes whenever the layout of the base archive changes, to rebuild cached ones.
const (
	baseFormat  = "vmtest-base-1"
	toolsFormat = "vmtest-tools-1"
	qemuFormat  = "vmtest-qemu-1"
)

// baseInitramfs returns the cached archive with everything but the tests: busybox,
// lvm2, the modules. It is rebuilt when the kernel or any host file in it changes.
func baseInitramfs(cache testvm.Cache, k testvm.Kernel) (string, error) {
	files, err := baseFiles(k)
	if err != nil {
		return "", err
	}
	header := fmt.Sprintf("%s\n%s %s\n%s\n%q\n", baseFormat, k.Release, k.Version, guestLVMConf, guestModules)
	return cache.Archive("initramfs", header, files, "the base initramfs for "+k.Release, func(w *testvm.CPIOWriter) {
		w.InitRoot("bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "root", "etc/lvm", "etc/lvm/profile")
		w.Blob("etc/lvm/lvm.conf", 0o644, []byte(guestLVMConf))
	})
}

// toolsInitramfs returns the cached archive of the host programs that -script
// adds (qemu-img, qemu-io) with their shared libraries, at /usr/bin in the
// guest; it goes between the base archive and the payload.
func toolsInitramfs(cache testvm.Cache) (string, error) {
	return programsInitramfs(cache, "tools", toolsFormat, scriptPrograms, nil)
}

// qemuInitramfs returns the cached archive of what -qemu adds for a nested
// VM: QEMU with its libraries, its TCG accelerator and the firmware it loads.
func qemuInitramfs(cache testvm.Cache) (string, error) {
	return programsInitramfs(cache, "qemu", qemuFormat, qemuPrograms, qemuDataFiles)
}

// programsInitramfs is the cached archive prefix-KEY.cpio of the programs
// (from this host's PATH, at /usr/bin in the guest) and the data files (at
// their host paths), with the shared libraries that the programs and the data
// files that are shared objects load.
func programsInitramfs(cache testvm.Cache, prefix, format string, programs, data []string) (string, error) {
	var progs []testvm.ArchiveFile
	for _, name := range programs {
		host, err := exec.LookPath(name)
		if err != nil {
			return "", err
		}
		progs = append(progs, testvm.ArchiveFile{Guest: filepath.Join("/usr/bin", name), Host: host})
	}
	var plain []testvm.ArchiveFile
	for _, d := range data {
		f := testvm.ArchiveFile{Guest: d, Host: d}
		if strings.HasSuffix(d, ".so") { // a module QEMU loads: its libraries too
			progs = append(progs, f)
		} else {
			plain = append(plain, f)
		}
	}
	files, err := programFiles(progs)
	if err != nil {
		return "", err
	}
	files = append(files, plain...)
	return cache.Archive(prefix, format+"\n", files, "the initramfs of "+strings.Join(programs, ", "), nil)
}

func baseFiles(k testvm.Kernel) ([]testvm.ArchiveFile, error) {
	var progs []testvm.ArchiveFile
	for _, p := range guestPrograms {
		progs = append(progs, testvm.ArchiveFile{Guest: p, Host: p})
	}
	files, err := programFiles(progs)
	if err != nil {
		return nil, err
	}
	// busybox is static: ldd has nothing to say about it.
	files = append([]testvm.ArchiveFile{{Guest: guest.Busybox, Host: guest.Busybox}}, files...)
	// The SPM's lvm shell reports through the command profile lvm2 ships for lvmdbusd.
	files = append(files, testvm.ArchiveFile{Guest: lvmdbusdProfile, Host: lvmdbusdProfile})
	// lvm's commands are symlinks to it (lvcreate -> lvm): carry them over.
	links, err := symlinksTo(filepath.Dir(guestPrograms[0]), "lvm")
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		files = append(files, testvm.ArchiveFile{Guest: l, Link: "lvm"})
	}
	mods, err := k.ModuleFiles(guestModules)
	if err != nil {
		return nil, err
	}
	return append(files, mods...), nil
}

// programFiles returns the programs followed by the shared libraries they
// load (ldd's view, the dynamic loader included), each library once at its
// host path. ldd fails on a static program.
func programFiles(progs []testvm.ArchiveFile) ([]testvm.ArchiveFile, error) {
	files := slices.Clone(progs)
	libs := map[string]bool{}
	for _, p := range progs {
		deps, err := sharedLibraries(p.Host)
		if err != nil {
			return nil, err
		}
		for _, d := range deps {
			libs[d] = true
		}
	}
	for _, l := range slices.Sorted(maps.Keys(libs)) {
		files = append(files, testvm.ArchiveFile{Guest: l, Host: l})
	}
	return files, nil
}

var lddPath = regexp.MustCompile(`(/\S+) \(0x`)

// sharedLibraries lists the libraries (and the dynamic loader) prog loads, as ldd resolves them.
func sharedLibraries(prog string) ([]string, error) {
	out, err := exec.Command("ldd", prog).Output()
	if err != nil {
		return nil, fmt.Errorf("ldd %s: %w", prog, err)
	}
	var libs []string
	for _, m := range lddPath.FindAllStringSubmatch(string(out), -1) {
		libs = append(libs, m[1])
	}
	return libs, nil
}

func symlinksTo(dir, target string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var links []string
	for _, e := range entries {
		if e.Type()&fs.ModeSymlink == 0 {
			continue
		}
		if t, err := os.Readlink(filepath.Join(dir, e.Name())); err == nil && t == target {
			links = append(links, filepath.Join(dir, e.Name()))
		}
	}
	return links, nil
}

// payloadInitramfs writes the per-run archive: this program as /init, the
// plan, the test binaries and each package's testdata, at the guest paths the
// plan names. hostPaths maps each guest path to the host file or directory.
func payloadInitramfs(out, initBinary string, p *plan, hostPaths map[string]string) error {
	planJSON, err := json.Marshal(p)
	if err != nil {
		return err
	}
	return testvm.WriteArchive(out, func(w *testvm.CPIOWriter) {
		w.File("init", initBinary, 0o755)
		w.Blob(guestPlanPath, 0o644, planJSON)
		for _, path := range slices.Sorted(maps.Keys(hostPaths)) {
			w.Tree(path, hostPaths[path])
		}
	})
}
