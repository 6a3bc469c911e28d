package lvm

import "hash/crc32"

// initialCRC is the seed lvm2 uses for every checksum it stores on disk
// (INITIAL_CRC in lib/misc/crc.h).
const initialCRC uint32 = 0xf597a6cf

// lvmCRC continues lvm2's checksum over p from the running value crc.
//
// lvm2 uses the reflected CRC-32 polynomial 0xedb88320 (the IEEE one) without
// the usual pre- and post-inversion: the register starts at the given value and
// is returned as is. hash/crc32 inverts on the way in and out, so inverting
// around it gives lvm's variant with the table-driven (and, on amd64,
// hardware-assisted) implementation.
func lvmCRC(crc uint32, p []byte) uint32 {
	return ^crc32.Update(^crc, crc32.IEEETable, p)
}
