package testvm

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// kernelMetapackage is Debian's cloud kernel: small, with device-mapper, loop and
// virtio-blk as modules and BPF, BTF and tracefs built in.
const kernelMetapackage = "linux-image-cloud-amd64"

// Kernel is one unpacked Debian kernel package in the cache.
type Kernel struct {
	Release string // uname -r, e.g. 6.1.0-56-cloud-amd64
	Version string // the package version, e.g. 6.1.192-2
	Root    string // the unpacked package
}

// Vmlinuz is the kernel image, for QEMU's -kernel.
func (k Kernel) Vmlinuz() string { return filepath.Join(k.Root, "boot", "vmlinuz-"+k.Release) }

func (k Kernel) modulesDir() string { return filepath.Join(k.Root, "lib", "modules", k.Release) }

// completeStamp marks a fully unpacked kernel, so that an interrupted run is redone.
const completeStamp = ".complete"

// Kernel returns the current Debian cloud kernel, downloading and unpacking it
// into the cache the first time. When the package index cannot name or fetch
// it (offline), the newest cached kernel is used. Processes that need it at
// the same time take turns, so that none unpacks over another's.
func (c Cache) Kernel() (Kernel, error) {
	unlock, err := c.lock("kernel")
	if err != nil {
		return Kernel{}, err
	}
	defer unlock()
	k, err := c.fetchKernel()
	if err == nil {
		return k, nil
	}
	// The local package index may be stale or missing: refresh it once.
	if os.Geteuid() == 0 {
		c.progress("refreshing the package index (%v)", err)
		if uerr := runQuiet("", "apt-get", "update", "-q"); uerr == nil {
			if k, err = c.fetchKernel(); err == nil {
				return k, nil
			}
		}
	}
	if cached, cerr := c.newestKernel(); cerr == nil {
		c.progress("cannot fetch the kernel (%v); using the cached %s %s", err, cached.Release, cached.Version)
		return cached, nil
	}
	return Kernel{}, err
}

func (c Cache) fetchKernel() (Kernel, error) {
	pkg, version, err := resolveKernelPackage()
	if err != nil {
		return Kernel{}, err
	}
	k := Kernel{
		Release: strings.TrimPrefix(pkg, "linux-image-"),
		Version: version,
	}
	k.Root = filepath.Join(c.Dir, "kernel", k.Release+"_"+version)
	if _, err := os.Stat(filepath.Join(k.Root, completeStamp)); err == nil {
		return k, nil
	}
	c.progress("downloading %s %s", pkg, version)
	if err := os.MkdirAll(filepath.Dir(k.Root), 0o755); err != nil {
		return Kernel{}, err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(k.Root), "download-")
	if err != nil {
		return Kernel{}, err
	}
	defer os.RemoveAll(tmp)
	if err := runQuiet(tmp, "apt-get", "download", "-q", pkg+"="+version); err != nil {
		return Kernel{}, err
	}
	debs, _ := filepath.Glob(filepath.Join(tmp, "*.deb"))
	if len(debs) != 1 {
		return Kernel{}, fmt.Errorf("apt-get download %s: got %d packages", pkg, len(debs))
	}
	root := filepath.Join(tmp, "root")
	if err := runQuiet("", "dpkg-deb", "-x", debs[0], root); err != nil {
		return Kernel{}, err
	}
	// The package ships no modules.dep: the guest's modprobe needs one.
	if err := runQuiet("", "depmod", "-b", root, k.Release); err != nil {
		return Kernel{}, err
	}
	if err := os.WriteFile(filepath.Join(root, completeStamp), nil, 0o644); err != nil {
		return Kernel{}, err
	}
	if err := os.RemoveAll(k.Root); err != nil {
		return Kernel{}, err
	}
	if err := os.Rename(root, k.Root); err != nil {
		return Kernel{}, err
	}
	return k, nil
}

// resolveKernelPackage asks the local package index which versioned kernel
// package the metapackage currently means, and its version.
func resolveKernelPackage() (pkg, version string, err error) {
	out, err := exec.Command("apt-cache", "depends", kernelMetapackage).Output()
	if err != nil {
		return "", "", fmt.Errorf("apt-cache depends %s: %w", kernelMetapackage, err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if dep, ok := strings.CutPrefix(strings.TrimSpace(l), "Depends: "); ok && strings.HasPrefix(dep, "linux-image-") {
			pkg = dep
			break
		}
	}
	if pkg == "" {
		return "", "", fmt.Errorf("apt-cache depends %s: no linux-image dependency", kernelMetapackage)
	}
	out, err = exec.Command("apt-cache", "show", "--no-all-versions", pkg).Output()
	if err != nil {
		return "", "", fmt.Errorf("apt-cache show %s: %w", pkg, err)
	}
	for _, l := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(l, "Version: "); ok {
			return pkg, strings.TrimSpace(v), nil
		}
	}
	return "", "", fmt.Errorf("apt-cache show %s: no version", pkg)
}

func (c Cache) newestKernel() (Kernel, error) {
	stamps, _ := filepath.Glob(filepath.Join(c.Dir, "kernel", "*", completeStamp))
	if len(stamps) == 0 {
		return Kernel{}, errors.New("no cached kernel")
	}
	newest, newestTime := "", int64(0)
	for _, s := range stamps {
		if st, err := os.Stat(s); err == nil && st.ModTime().UnixNano() > newestTime {
			newest, newestTime = filepath.Dir(s), st.ModTime().UnixNano()
		}
	}
	release, version, _ := strings.Cut(filepath.Base(newest), "_")
	return Kernel{Release: release, Version: version, Root: newest}, nil
}

// ModuleFiles returns the archive entries that let the guest's modprobe load
// the named modules: their files and those of every module they depend on,
// and depmod's indexes, under /lib/modules/RELEASE.
func (k Kernel) ModuleFiles(names []string) ([]ArchiveFile, error) {
	mods, err := k.moduleClosure(names)
	if err != nil {
		return nil, err
	}
	indexes, _ := filepath.Glob(filepath.Join(k.modulesDir(), "modules.*"))
	for _, idx := range indexes {
		mods = append(mods, filepath.Base(idx))
	}
	var files []ArchiveFile
	for _, m := range mods {
		files = append(files, ArchiveFile{Guest: filepath.Join("/lib/modules", k.Release, m), Host: filepath.Join(k.modulesDir(), m)})
	}
	return files, nil
}

// moduleClosure returns the files, relative to the modules directory, of the
// named modules and of every module they depend on, from depmod's modules.dep.
func (k Kernel) moduleClosure(names []string) ([]string, error) {
	f, err := os.Open(filepath.Join(k.modulesDir(), "modules.dep"))
	if err != nil {
		return nil, err
	}
	defer f.Close()
	deps := map[string][]string{} // module name -> its file, then its dependencies' files
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		file, rest, ok := strings.Cut(sc.Text(), ":")
		if ok {
			deps[moduleName(file)] = append([]string{file}, strings.Fields(rest)...)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	var files []string
	for _, n := range names {
		d, ok := deps[moduleName(n)]
		if !ok {
			return nil, fmt.Errorf("kernel %s has no module %s", k.Release, n)
		}
		files = append(files, d...)
	}
	slices.Sort(files)
	return slices.Compact(files), nil
}

// moduleName normalises "kernel/drivers/md/dm-mod.ko" or "dm-mod" to "dm_mod".
func moduleName(s string) string {
	return strings.ReplaceAll(strings.TrimSuffix(filepath.Base(s), ".ko"), "-", "_")
}

// runQuiet runs a command in dir and returns its output in the error if it fails.
func runQuiet(dir, name string, args ...string) error {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s %s: %w\n%s", name, strings.Join(args, " "), err, out)
	}
	return nil
}
