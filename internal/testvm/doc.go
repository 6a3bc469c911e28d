// Package testvm boots real, tiny QEMU VMs (TCG) for tests: Debian's cloud
// kernel and an initramfs whose /init, the writer (internal/testvm/writer),
// writes pseudo-random data with O_DIRECT to each virtio disk, reads it back,
// compares it, reports and powers off. On a disk whose device is smaller than
// the data, with werror stop or enospc, QEMU pauses the VM (status io-error)
// until the device grows and the VM is continued; the guest then finishes
// with its data intact.
//
//	kit := testvm.NewKit(t)
//	disk := testvm.NewQCOW2Disk(t, 16<<20, 256<<20)
//	vm := testvm.Start(t, kit, testvm.Options{Drives: []testvm.Drive{{Path: disk.Path, Werror: "stop"}}, DataMiB: 32})
//	// ... vm.QMP(0) says io-error; disk.Grow(t, 64<<20); cont ...
//	if _, err := vm.Wait(ctx); err != nil { t.Fatal(err) }
//
// Two VMs paused on one device: NewSharedQCOW2Disk, and each VM's Drive
// Shared, at its own Offset.
//
// Outside a test, BuildKit (or LoadKit, for a kit copied where there is no Go
// toolchain) and Boot do the same and return errors; Options place the QMP
// sockets (QMP) and copy the console to a writer (Console); the MicroVM
// machine boots faster in a VM under TCG. tools/testvm is the command.
//
// It also holds what tools/vmtest boots its guests with: the kernel download
// into the module's cache, a cpio writer for initramfs archives, the cache of
// those archives, and QEMU's options for a direct kernel boot and virtio disks.
package testvm
