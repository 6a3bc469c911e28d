package agent

import (
	"fmt"
	"slices"
	"strings"

	"github.com/lvwatch/lvwatch/internal/dm"
	"github.com/lvwatch/lvwatch/internal/lvm"
	"github.com/lvwatch/lvwatch/internal/spm"
)

// lvOfDMName returns the LV of vg that the device-mapper name belongs to: lvm
// names an LV's device "VG-LV" with each '-' of either name doubled. A name of
// another VG, or of a layer lvm adds under an LV ("-real", "-cow", "_tmeta" are
// LVs of their own or carry a single '-'), returns false.
func lvOfDMName(vg, name string) (string, bool) {
	prefix := lvm.DMName(vg, "")
	rest, ok := strings.CutPrefix(name, prefix)
	if !ok || rest == "" {
		return "", false
	}
	if strings.Contains(strings.ReplaceAll(rest, "--", ""), "-") {
		return "", false // a layer device: VG-LV-real
	}
	return strings.ReplaceAll(rest, "--", "-"), true
}

// lvmUUIDPrefix starts the device-mapper uuid of every device lvm made.
const lvmUUIDPrefix = "LVM-"

// found is one active LV of a configured domain.
type found struct {
	vg, lv string
	dev    dm.Device
}

// activeLVs lists the active LVs of the domains from device-mapper, leaving out
// the special LVs and devices not made by lvm.
func activeLVs(ctl *dm.Control, vgs []string) ([]found, error) {
	devs, err := ctl.List()
	if err != nil {
		return nil, fmt.Errorf("list device-mapper devices: %w", err)
	}
	var out []found
	for _, d := range devs {
		if lv, vg, ok := matchLV(d, vgs); ok {
			out = append(out, found{vg: vg, lv: lv, dev: d})
		}
	}
	return out, nil
}

func matchLV(d dm.Device, vgs []string) (lv, vg string, ok bool) {
	if !strings.HasPrefix(d.UUID, lvmUUIDPrefix) {
		return "", "", false
	}
	for _, vg := range vgs {
		if lv, ok := lvOfDMName(vg, d.Name); ok && !spm.IsSpecialLV(lv) {
			return lv, vg, true
		}
	}
	return "", "", false
}

// tableDevices are the block devices under a device-mapper device's live table
// (its PVs, for an LV): "major:minor" in each target's parameters, named by the
// kernel's sysfs. They let a refresh read the VG without scanning every disk.
func tableDevices(ctl *dm.Control, d dm.Device) ([]string, error) {
	_, table, err := ctl.Table(dm.ByDevno(d.Major, d.Minor))
	if err != nil {
		return nil, fmt.Errorf("table of %s: %w", d.Name, err)
	}
	var out []string
	for _, t := range table {
		for _, f := range strings.Fields(t.Params) {
			var major, minor uint32
			if n, _ := fmt.Sscanf(f, "%d:%d", &major, &minor); n != 2 {
				continue
			}
			path, err := lvm.DeviceNode(major, minor)
			if err != nil {
				return nil, err
			}
			if !slices.Contains(out, path) {
				out = append(out, path)
			}
		}
	}
	return out, nil
}
