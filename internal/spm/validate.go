package spm

import (
	"errors"
	"fmt"
	"slices"

	"github.com/lvwatch/lvwatch/internal/lvm"
	"github.com/lvwatch/lvwatch/internal/size"
)

// specialLVs are the LVs of a vdsm block domain that are not volumes: the SPM
// never resizes them, whatever a request says.
var specialLVs = []string{"inbox", "outbox", "metadata", "ids", "leases", "master", "xleases"}

// IsSpecialLV reports whether lv is one of a domain's special LVs, which are
// never extended (nor watched by the agent).
func IsSpecialLV(lv string) bool { return slices.Contains(specialLVs, lv) }

// errRefused marks a request refused by validation (as opposed to LVM failing).
var errRefused = errors.New("refused")

func refuse(format string, a ...any) error {
	return fmt.Errorf("%w: %s", errRefused, fmt.Sprintf(format, a...))
}

// space is what a VG can give, in extents, as its metadata says.
type space struct {
	extentBytes uint64
	total       uint64 // extents of the allocatable PVs found on this host
	free        uint64 // of those, not used by any LV
	reserve     uint64 // extents the SPM never hands out
}

// vgSpace counts the VG's extents. Only allocatable PVs present on this host
// count: lvm allocates from nothing else.
func vgSpace(vg *lvm.VG, reserveBytes uint64) space {
	sp := space{extentBytes: vg.ExtentSize * 512}
	usable := map[string]bool{}
	for _, pv := range vg.PVs {
		if pv.Device != "" && slices.Contains(pv.Status, "ALLOCATABLE") {
			usable[pv.Name] = true
			sp.total += pv.PECount
		}
	}
	var used uint64
	for _, lv := range vg.LVs {
		for _, seg := range lv.Segments {
			for _, a := range seg.Stripes {
				if usable[a.PV] {
					used += seg.AreaLen()
				}
			}
		}
	}
	sp.free = sp.total - min(used, sp.total)
	if sp.extentBytes > 0 {
		sp.reserve = ceilDiv(reserveBytes, sp.extentBytes)
	}
	return sp
}

// available is what requests may take now: the free extents beyond the reserve.
func (sp space) available() uint64 { return sp.free - min(sp.reserve, sp.free) }

func ceilDiv(a, b uint64) uint64 { return a/b + min(a%b, 1) }

// limits are a domain's bounds on what a request may ask.
type limits struct {
	maxLVBytes uint64
}

// target validates a request for volume to sizeMiB against the VG and returns
// the LV and the extents it must have. A refusal wraps errRefused and says why.
func (l limits) target(vg *lvm.VG, sp space, volume string, sizeMiB uint64) (*lvm.LV, uint64, error) {
	if IsSpecialLV(volume) {
		return nil, 0, refuse("volume %s is a special LV of the domain", volume)
	}
	lv, err := vg.LV(volume)
	if err != nil {
		return nil, 0, refuse("volume %s: no such LV in VG %s", volume, vg.Name)
	}
	if !lv.HasStatus("VISIBLE") {
		return nil, 0, refuse("volume %s is a hidden LV", volume)
	}
	for _, seg := range lv.Segments {
		if seg.Type != "striped" && seg.Type != "linear" {
			return nil, 0, refuse("volume %s has a %s segment, not a plain volume", volume, seg.Type)
		}
	}
	want := sizeMiB << 20 // sizeMiB ≤ 2^32: no overflow
	if want > l.maxLVBytes {
		return nil, 0, refuse("volume %s: %s asked, above the maximum LV size %s", volume, size.Format(want), size.Format(l.maxLVBytes))
	}
	if sp.extentBytes == 0 {
		return nil, 0, fmt.Errorf("VG %s: extent size 0", vg.Name)
	}
	extents := ceilDiv(want, sp.extentBytes)
	return lv, extents, nil
}
