// Package testvm holds what tests need to boot QEMU guests: Debian's cloud
// kernel, downloaded once into the module's cache, a cpio writer for
// initramfs archives, the cache of those archives, and QEMU's options for a
// direct kernel boot and for virtio disks. tools/vmtest boots its guests with
// them.
package testvm
