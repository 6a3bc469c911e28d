// Package lvm reads LVM2 metadata straight from physical volumes, read-only,
// and builds the device-mapper table lvm itself would load for a linear or
// striped logical volume.
//
// The on-disk layout it understands (all integers little-endian):
//
//   - the label: one 512-byte sector among the first four of the device, starting
//     "LABELONE", with its own sector number, a CRC of the rest of the sector and
//     the type "LVM2 001"; after it the PV header: the PV uuid (32 characters),
//     the device size, a zero-terminated list of data areas and one of metadata
//     areas (offset and size in bytes);
//   - each metadata area starts with a 512-byte mda_header: CRC, the magic
//     " LVM2 x[5A%r0N*>", version 1, its own start and size, and raw locations;
//     slot 0 points to the committed metadata text inside the area, which is a
//     circular buffer: a text that runs past the area's end continues right
//     after the header;
//   - the text is LVM's configuration syntax (sections, key = value, strings,
//     integers, arrays, # comments), terminated by a NUL byte.
//
// Every byte read from disk is treated as untrusted: each length and offset is
// bounds-checked, every failure is an error that names the device and the
// place, and nothing panics. Devices are read with O_DIRECT so that metadata
// another host just wrote is not hidden by this host's page cache. Nothing is
// ever written to a device; the one thing the package may create is a private,
// temporary device node for a block device that has none under /dev.
//
// The behaviour follows lvm2 (lib/label, lib/format_text, lib/metadata/merge.c,
// lib/activate/dev_manager.c, libdm): contiguous compatible segments are merged
// as lvm merges them when it imports metadata, and each remaining segment
// becomes one target.
package lvm
