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

// writerFormat changes whenever the layout of the writer's archive changes, to rebuild cached ones.
const writerFormat = "testvm-writer-1"

// writerModules are what the guest needs for its disks: in Debian's cloud
// kernel, virtio and its PCI transport are modules too.
var writerModules = []string{"virtio_pci", "virtio_blk"}

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
	for _, program := range []string{"qemu-system-x86_64", guest.Busybox, "go"} {
		if _, err := exec.LookPath(program); err != nil {
			testutil.SkipOrFail(t, fmt.Sprintf("test VMs need %s (tools/deps.sh installs it): %v", program, err))
		}
	}
	kitOnce.Lock()
	defer kitOnce.Unlock()
	if !kitOnce.built {
		kitOnce.kit, kitOnce.err = buildKit(t.Logf)
		kitOnce.built = true
	}
	if kitOnce.err != nil {
		testutil.SkipOrFail(t, "test VM kit: "+kitOnce.err.Error())
	}
	return kitOnce.kit
}

func buildKit(progress func(format string, args ...any)) (Kit, error) {
	moduleDir, _, err := Module()
	if err != nil {
		return Kit{}, err
	}
	cache := Cache{Dir: CacheDir(moduleDir), Progress: progress}
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
