package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// What the guest gets from this host besides the kernel: busybox for a shell
// and modprobe, and lvm2's programs with the shared libraries they load.
var (
	busyboxPath   = "/bin/busybox"
	guestPrograms = []string{"/usr/sbin/lvm", "/usr/sbin/dmsetup"}
	guestModules  = []string{"virtio_pci", "virtio_blk", "loop", "dm_mod", "dm_snapshot", "dm_thin_pool"}
	// -script adds these, from this host's PATH, with their libraries.
	scriptPrograms = []string{"qemu-img", "qemu-io"}
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
)

// baseInitramfs returns the cached archive with everything but the tests: busybox,
// lvm2, the modules. It is rebuilt when the kernel or any host file in it changes.
func baseInitramfs(cacheDir string, k kernel) (string, error) {
	files, err := baseFiles(k)
	if err != nil {
		return "", err
	}
	header := fmt.Sprintf("%s\n%s %s\n%s\n%q\n", baseFormat, k.Release, k.Version, guestLVMConf, guestModules)
	return cachedArchive(cacheDir, "initramfs", header, files, "the base initramfs for "+k.Release, func(w *cpioWriter) {
		for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "run", "root", "etc/lvm", "etc/lvm/profile"} {
			w.dir(d)
		}
		// The kernel opens /dev/console for init before anything is mounted.
		w.charDev("dev/console", 0o600, 5, 1)
		w.blob("etc/lvm/lvm.conf", 0o644, []byte(guestLVMConf))
	})
}

// toolsInitramfs returns the cached archive of the host programs that -script
// adds (qemu-img, qemu-io) with their shared libraries, at /usr/bin in the
// guest; it goes between the base archive and the payload.
func toolsInitramfs(cacheDir string) (string, error) {
	var progs []baseFile
	for _, name := range scriptPrograms {
		host, err := exec.LookPath(name)
		if err != nil {
			return "", err
		}
		progs = append(progs, baseFile{guest: filepath.Join("/usr/bin", name), host: host})
	}
	files, err := programFiles(progs)
	if err != nil {
		return "", err
	}
	return cachedArchive(cacheDir, "tools", toolsFormat+"\n", files, "the initramfs of "+strings.Join(scriptPrograms, ", "), nil)
}

// cachedArchive returns cacheDir/PREFIX-KEY.cpio with fill's entries and then
// files, KEY being a hash of header and of files' names and contents; it is
// written (what says what, in the progress line) only when no archive has
// that key, and older ones with the prefix are removed then.
func cachedArchive(cacheDir, prefix, header string, files []baseFile, what string, fill func(*cpioWriter)) (string, error) {
	h := sha256.New()
	io.WriteString(h, header)
	for _, f := range files {
		fmt.Fprintf(h, "%s <- %s%s\n", f.guest, f.host, f.link)
		if f.link != "" {
			continue
		}
		if err := hashFile(h, f.host); err != nil {
			return "", err
		}
	}
	key := hex.EncodeToString(h.Sum(nil))[:16]
	out := filepath.Join(cacheDir, prefix+"-"+key+".cpio")
	if _, err := os.Stat(out); err == nil {
		return out, nil
	}
	progress("building %s", what)
	stale, _ := filepath.Glob(filepath.Join(cacheDir, prefix+"-*.cpio"))
	for _, s := range stale {
		os.Remove(s)
	}
	err := writeArchive(out, func(w *cpioWriter) {
		if fill != nil {
			fill(w)
		}
		for _, f := range files {
			if f.link != "" {
				w.symlink(f.guest, f.link)
			} else {
				w.file(f.guest, f.host, 0o755)
			}
		}
	})
	return out, err
}

// baseFile is one entry of a cached archive: a copy of a host file, or a symlink.
type baseFile struct {
	guest, host string
	link        string // symlink target instead of a copy
}

func baseFiles(k kernel) ([]baseFile, error) {
	var progs []baseFile
	for _, p := range guestPrograms {
		progs = append(progs, baseFile{guest: p, host: p})
	}
	files, err := programFiles(progs)
	if err != nil {
		return nil, err
	}
	// busybox is static: ldd has nothing to say about it.
	files = append([]baseFile{{guest: busyboxPath, host: busyboxPath}}, files...)
	// The SPM's lvm shell reports through the command profile lvm2 ships for lvmdbusd.
	files = append(files, baseFile{guest: lvmdbusdProfile, host: lvmdbusdProfile})
	// lvm's commands are symlinks to it (lvcreate -> lvm): carry them over.
	links, err := symlinksTo(filepath.Dir(guestPrograms[0]), "lvm")
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		files = append(files, baseFile{guest: l, link: "lvm"})
	}
	mods, err := k.moduleClosure(guestModules)
	if err != nil {
		return nil, err
	}
	// depmod's indexes, for the guest's modprobe.
	indexes, _ := filepath.Glob(filepath.Join(k.modulesDir(), "modules.*"))
	for _, idx := range indexes {
		mods = append(mods, filepath.Base(idx))
	}
	for _, m := range mods {
		files = append(files, baseFile{guest: filepath.Join("/lib/modules", k.Release, m), host: filepath.Join(k.modulesDir(), m)})
	}
	return files, nil
}

// programFiles returns the programs followed by the shared libraries they
// load (ldd's view, the dynamic loader included), each library once at its
// host path. ldd fails on a static program.
func programFiles(progs []baseFile) ([]baseFile, error) {
	files := slices.Clone(progs)
	libs := map[string]bool{}
	for _, p := range progs {
		deps, err := sharedLibraries(p.host)
		if err != nil {
			return nil, err
		}
		for _, d := range deps {
			libs[d] = true
		}
	}
	for _, l := range slices.Sorted(maps.Keys(libs)) {
		files = append(files, baseFile{guest: l, host: l})
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
	return writeArchive(out, func(w *cpioWriter) {
		w.file("init", initBinary, 0o755)
		w.blob(guestPlanPath, 0o644, planJSON)
		for _, guest := range slices.Sorted(maps.Keys(hostPaths)) {
			addTree(w, guest, hostPaths[guest])
		}
	})
}

// addTree adds a file, or a directory with everything under it.
func addTree(w *cpioWriter, guest, host string) {
	err := filepath.WalkDir(host, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(host, p)
		g := filepath.Join(guest, rel)
		switch {
		case d.IsDir():
			w.dir(g)
		case d.Type().IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			w.file(g, p, uint32(info.Mode().Perm()))
		}
		return nil
	})
	if err != nil && w.err == nil {
		w.err = err
	}
}

func writeArchive(out string, fill func(*cpioWriter)) error {
	f, err := os.CreateTemp(filepath.Dir(out), ".tmp-*.cpio")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	w := newCPIOWriter(f)
	fill(w)
	err = w.close()
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("write %s: %w", out, err)
	}
	return os.Rename(f.Name(), out)
}

func hashFile(w io.Writer, path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}
