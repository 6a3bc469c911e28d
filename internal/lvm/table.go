package lvm

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/lvwatch/lvwatch/internal/dm"
)

// ErrPVMissing is wrapped by Table when a PV the LV needs is not on this host.
var ErrPVMissing = errors.New("PV not found on this host")

// Table is the device-mapper table lvm would load for the LV: one target per
// (merged) segment, in order; "linear" for a one-stripe segment with params
// "MAJ:MIN OFFSET", "striped" with "STRIPES CHUNK MAJ:MIN OFFSET ..." otherwise,
// offsets and the chunk size in sectors (lib/striped/striped.c,
// lib/activate/dev_manager.c add_areas_line, libdm's _emit_segment_line).
// This assumes lvm's default activation/use_linear_target=1.
//
// It fails for other segment types, for areas on other LVs (pvmove, layered
// LVs), and when a PV is not found on this host (errors.Is ErrPVMissing),
// is ambiguous (the same PV uuid on several devices) or is too small.
func (vg *VG) Table(lvName string) ([]dm.Target, error) {
	lv, err := vg.LV(lvName)
	if err != nil {
		return nil, err
	}
	if len(lv.Segments) == 0 {
		return nil, fmt.Errorf("LV %s/%s has no segments", vg.Name, lv.Name)
	}
	targets := make([]dm.Target, 0, len(lv.Segments))
	var start uint64
	var b strings.Builder
	for _, s := range lv.Segments {
		if s.Type != "striped" && s.Type != "linear" {
			return nil, fmt.Errorf("LV %s/%s: segment at extent %d has type %q; only linear and striped are supported", vg.Name, lv.Name, s.StartExtent, s.Type)
		}
		length := s.ExtentCount * vg.ExtentSize // bounded by ParseMetadata
		b.Reset()
		t := dm.Target{Start: start, Length: length, Type: "linear"}
		if s.StripeCount > 1 {
			t.Type = "striped"
			b.WriteString(strconv.FormatUint(s.StripeCount, 10))
			b.WriteByte(' ')
			b.WriteString(strconv.FormatUint(s.StripeSize, 10))
			b.WriteByte(' ')
		}
		for i, a := range s.Stripes {
			if a.PV == "" {
				return nil, fmt.Errorf("LV %s/%s: segment at extent %d: stripe %d is on LV %s, not on a PV (pvmove or a layered LV); not supported", vg.Name, lv.Name, s.StartExtent, i, a.LV)
			}
			pv, err := vg.PV(a.PV)
			if err != nil {
				return nil, err
			}
			if err := pv.usable(); err != nil {
				return nil, fmt.Errorf("LV %s/%s: %w", vg.Name, lv.Name, err)
			}
			// pe_start + extent*extent_size: bounded by ParseMetadata.
			off := pv.PEStart + a.Start*vg.ExtentSize
			if pv.DeviceSize > 0 && (off+s.AreaLen()*vg.ExtentSize)*sectorSize > pv.DeviceSize {
				return nil, fmt.Errorf("LV %s/%s: segment at extent %d maps sectors %d-%d of %s (%s), beyond its %d bytes",
					vg.Name, lv.Name, s.StartExtent, off, off+s.AreaLen()*vg.ExtentSize-1, pv.Name, pv.Device, pv.DeviceSize)
			}
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(strconv.FormatUint(uint64(pv.Major), 10))
			b.WriteByte(':')
			b.WriteString(strconv.FormatUint(uint64(pv.Minor), 10))
			b.WriteByte(' ')
			b.WriteString(strconv.FormatUint(off, 10))
		}
		t.Params = b.String()
		targets = append(targets, t)
		start += length
	}
	return targets, nil
}

func (pv *PV) usable() error {
	switch {
	case pv.Device == "":
		return fmt.Errorf("%s (uuid %s, last seen as %s): %w", pv.Name, pv.ID, pv.DeviceHint, ErrPVMissing)
	case len(pv.Duplicates) > 0:
		return fmt.Errorf("%s (uuid %s) is on several devices: %s and %s; cannot tell which one lvm uses", pv.Name, pv.ID, pv.Device, strings.Join(pv.Duplicates, ", "))
	case !pv.IsBlock:
		return fmt.Errorf("%s (uuid %s) is on %s, which is not a block device", pv.Name, pv.ID, pv.Device)
	}
	return nil
}

// FormatTable writes targets the way `dmsetup table` prints them, one per line.
func FormatTable(targets []dm.Target) string {
	var b strings.Builder
	for _, t := range targets {
		fmt.Fprintf(&b, "%d %d %s %s\n", t.Start, t.Length, t.Type, t.Params)
	}
	return b.String()
}
