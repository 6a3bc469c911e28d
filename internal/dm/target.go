// Package dm drives the kernel's device-mapper through ioctls on /dev/mapper/control.
package dm

// Target is one line of a device-mapper table, or of its status.
type Target struct {
	Start, Length uint64 // 512-byte sectors
	Type, Params  string // Params holds the status line when read by Status
}

// TableSectors is the size of the device a table maps: the end of its last target.
func TableSectors(table []Target) uint64 {
	if len(table) == 0 {
		return 0
	}
	last := table[len(table)-1]
	return last.Start + last.Length
}
