package testvm

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/lvwatch/lvwatch/internal/testutil"
	"github.com/lvwatch/lvwatch/internal/testvm/guest"
)

// Kit is what a test VM boots: Debian's cloud kernel and an initramfs whose
// /init is the writer (internal/testvm/writer), with busybox for modprobe and
// the virtio modules. Both are cached under the module's .cache/vmtest.
type Kit struct {
	Kernel    string // the kernel image, for -kernel
	Initramfs string // for -initrd
}

// The kit's files in a directory of their own (Kit.In, LoadKit): where
// tools/vmtest puts them in its guest for tools/testvm.
const (
	kitKernelName    = "vmlinuz"
	kitInitramfsName = "initramfs.cpio"
)

// In is where the kit's files are in dir (copied there by whoever copies them).
func (Kit) In(dir string) Kit {
	return Kit{Kernel: filepath.Join(dir, kitKernelName), Initramfs: filepath.Join(dir, kitInitramfsName)}
}

// LoadKit is the kit copied into dir (Kit.In), for a machine that cannot
// build it: no Go toolchain or module there (tools/vmtest's guest).
func LoadKit(dir string) (Kit, error) {
	k := Kit{}.In(dir)
	for _, f := range []string{k.Kernel, k.Initramfs} {
		st, err := os.Stat(f)
		if err != nil {
			return Kit{}, fmt.Errorf("testvm kit: %w", err)
		}
		if !st.Mode().IsRegular() {
			return Kit{}, fmt.Errorf("testvm kit: %s is not a regular file", f)
		}
	}
	return k, nil
}

// writerFormat changes whenever the layout of the writer's archive changes, to rebuild cached ones.
const writerFormat = "testvm-writer-2"

// writerModules are what the guest needs for its disks: in Debian's cloud
// kernel, virtio and its transports (PCI, MMIO for a microvm) are modules too.
var writerModules = []string{"virtio_pci", "virtio_mmio", "virtio_blk"}

// kitOnce builds the kit once per test binary; its first user's log hears of the slow steps.
var kitOnce struct {
	sync.Mutex
	built bool
	kit   Kit
	err   error
}

// NewKit returns the kit, building what the cache lacks (the kernel download,
// the writer). It skips the test, or fails it when LVWATCH_REQUIRE_PRIVILEGED=1
// (testutil.SkipOrFail), when QEMU, busybox or the kernel is not to be had.
func NewKit(t testing.TB) Kit {
	t.Helper()
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		testutil.SkipOrFail(t, "test VMs need qemu-system-x86_64 (tools/deps.sh installs it): "+err.Error())
	}
	kitOnce.Lock()
	defer kitOnce.Unlock()
	if !kitOnce.built {
		kitOnce.kit, kitOnce.err = BuildKit(t.Logf)
		kitOnce.built = true
	}
	if kitOnce.err != nil {
		testutil.SkipOrFail(t, "test VM kit: "+kitOnce.err.Error())
	}
	return kitOnce.kit
}

// BuildKit returns the kit of the module of the working directory, building
// what the cache lacks; progress, when set, hears of the slow steps. It needs
// the go command and busybox (tools/deps.sh installs it).
func BuildKit(progress func(format string, args ...any)) (Kit, error) {
	for _, program := range []string{guest.Busybox, "go"} {
		if _, err := exec.LookPath(program); err != nil {
			return Kit{}, fmt.Errorf("the test VM kit needs %s (tools/deps.sh installs busybox-static): %w", program, err)
		}
	}
	moduleDir, _, err := Module()
	if err != nil {
		return Kit{}, err
	}
	return Cache{Dir: CacheDir(moduleDir), Progress: progress}.Kit(moduleDir)
}

// Kit returns the kit of the module in moduleDir from this cache, building
// what it lacks: the kernel download, the writer's initramfs.
func (cache Cache) Kit(moduleDir string) (Kit, error) {
	k, err := cache.Kernel()
	if err != nil {
		return Kit{}, err
	}
	work, err := os.MkdirTemp("", "testvm-kit-")
	if err != nil {
		return Kit{}, err
	}
	defer os.RemoveAll(work)
	writer := filepath.Join(work, "init")
	if err := GoStatic(moduleDir, "build", "-o", writer, "./internal/testvm/writer"); err != nil {
		return Kit{}, err
	}
	files, err := k.ModuleFiles(writerModules)
	if err != nil {
		return Kit{}, err
	}
	files = append(files, ArchiveFile{Guest: guest.Busybox, Host: guest.Busybox}, ArchiveFile{Guest: "/init", Host: writer})
	header := fmt.Sprintf("%s\n%s %s\n", writerFormat, k.Release, k.Version)
	initramfs, err := cache.Archive("writer", header, files, "the test VMs' initramfs for "+k.Release, func(w *CPIOWriter) {
		w.InitRoot("dev", "proc", "sys")
	})
	if err != nil {
		return Kit{}, err
	}
	return Kit{Kernel: k.Vmlinuz(), Initramfs: initramfs}, nil
}
