package lvm

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// sysRoot is where sysfs is mounted.
var sysRoot = "/sys"

func devMajor(rdev uint64) uint32 { return unix.Major(rdev) }
func devMinor(rdev uint64) uint32 { return unix.Minor(rdev) }

// candidate is a device to read: a path, and for scanned block devices the
// sysfs name and number it was found under.
type candidate struct {
	path         string
	sysName      string
	major, minor uint32
	scanned      bool
}

// Block device majors never worth reading: SCSI CD-ROMs and floppies.
const (
	majorSCSICDROM = 11
	majorFloppy    = 2
)

// scanBlockDevices lists the block devices lvm would scan for PVs with its
// default configuration, from sysfs:
//   - not empty (size 0: no medium, unattached loop devices), not CD-ROMs;
//   - not LVM LVs (dm uuid "LVM-..."; lvm's devices/scan_lvs=0): a guest's
//     PV inside a VM disk must never be taken for the host's;
//   - not suspended dm devices, whose reads would block;
//   - not a component of a multipath map or an md array (lvm's
//     multipath_component_detection and md_component_detection);
//   - listed in lvm's devices file when it has one, else accepted by its
//     global_filter and filter.
//
// skipped says what was left out and why.
func scanBlockDevices(cfg *HostConfig) (cands []candidate, skipped []string, err error) {
	dir := filepath.Join(sysRoot, "class", "block")
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, nil, fmt.Errorf("list block devices: %w", err)
	}
	sel, err := newSelector(cfg)
	if err != nil {
		return nil, nil, err
	}
	for _, e := range ents {
		name := e.Name()
		base := filepath.Join(dir, name)
		major, minor, err := readDevNumber(filepath.Join(base, "dev"))
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("%s: %v", name, err))
			continue
		}
		if major == majorSCSICDROM || major == majorFloppy {
			continue
		}
		if size, err := readSysUint(filepath.Join(base, "size")); err != nil || size == 0 {
			continue
		}
		if uuid := readSysString(filepath.Join(base, "dm", "uuid")); strings.HasPrefix(uuid, "LVM-") {
			continue
		}
		// A suspended dm device blocks every read until it is resumed (lvm's
		// devices/ignore_suspended_devices).
		if readSysString(filepath.Join(base, "dm", "suspended")) == "1" {
			skipped = append(skipped, name+": suspended")
			continue
		}
		if h := componentOf(name); h != "" {
			skipped = append(skipped, fmt.Sprintf("%s: component of %s", name, h))
			continue
		}
		node := devNodePath(base, name)
		if why := sel.why(name, node, major, minor); why != "" {
			skipped = append(skipped, name+": "+why)
			continue
		}
		cands = append(cands, candidate{
			path:    node,
			sysName: name,
			major:   major,
			minor:   minor,
			scanned: true,
		})
	}
	return cands, skipped, nil
}

// componentOf returns the holder that makes the device a multipath or md
// component, or "".
func componentOf(name string) string {
	ents, err := os.ReadDir(filepath.Join(sysRoot, "class", "block", name, "holders"))
	if err != nil {
		return ""
	}
	for _, e := range ents {
		h := e.Name()
		if strings.HasPrefix(h, "md") {
			return h
		}
		if uuid := readSysString(filepath.Join(sysRoot, "class", "block", h, "dm", "uuid")); strings.HasPrefix(uuid, "mpath-") {
			return h
		}
	}
	return ""
}

// DeviceNode is the /dev node of block device major:minor, as devtmpfs names
// it (the kernel's own node, there before its uevent goes out, udev or not).
func DeviceNode(major, minor uint32) (string, error) {
	sysDir := fmt.Sprintf("/sys/dev/block/%d:%d", major, minor)
	target, err := os.Readlink(sysDir)
	if err != nil {
		return "", fmt.Errorf("block device %d:%d: %w", major, minor, err)
	}
	return devNodePath(sysDir, filepath.Base(target)), nil
}

// devNodePath is the device's node under /dev: DEVNAME from its uevent file
// (devtmpfs names nodes so, udev or not), else the sysfs name with '!' for '/'.
func devNodePath(sysDir, name string) string {
	if b, err := os.ReadFile(filepath.Join(sysDir, "uevent")); err == nil {
		sc := bufio.NewScanner(bytes.NewReader(b))
		for sc.Scan() {
			if v, ok := strings.CutPrefix(sc.Text(), "DEVNAME="); ok && v != "" && !strings.Contains(v, "..") {
				return "/dev/" + v
			}
		}
	}
	return "/dev/" + strings.ReplaceAll(name, "!", "/")
}

func readDevNumber(path string) (major, minor uint32, err error) {
	s := readSysString(path)
	a, b, ok := strings.Cut(s, ":")
	if !ok {
		return 0, 0, fmt.Errorf("bad device number %q in %s", s, path)
	}
	ma, err1 := strconv.ParseUint(a, 10, 32)
	mi, err2 := strconv.ParseUint(b, 10, 32)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("bad device number %q in %s", s, path)
	}
	return uint32(ma), uint32(mi), nil
}

func readSysString(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func readSysUint(path string) (uint64, error) {
	return strconv.ParseUint(readSysString(path), 10, 64)
}

// openCandidate opens the device: its /dev node if that is the right device,
// else (no udev, a stale or missing node) a private node made for the number.
func openCandidate(c candidate) (*directFile, bool, error) {
	d, err := openDirect(c.path)
	if !c.scanned {
		return d, false, err
	}
	want := unix.Mkdev(c.major, c.minor)
	if err == nil {
		if d.isBlk && d.rdev == want {
			return d, false, nil
		}
		d.close()
	}
	tmp, err := os.MkdirTemp("", "lvwatch-dev-")
	if err != nil {
		return nil, false, fmt.Errorf("%s (%d:%d): no usable /dev node, and no temporary one: %w", c.path, c.major, c.minor, err)
	}
	defer os.RemoveAll(tmp)
	node := filepath.Join(tmp, "dev")
	if err := unix.Mknod(node, unix.S_IFBLK|0o400, int(want)); err != nil {
		return nil, false, fmt.Errorf("%s (%d:%d): no usable /dev node, and mknod failed: %w", c.path, c.major, c.minor, err)
	}
	d, err = openDirect(node)
	if err != nil {
		return nil, false, fmt.Errorf("%s (%d:%d): %w", c.path, c.major, c.minor, err)
	}
	d.path = c.path
	return d, true, nil
}

// holdersOf returns the device numbers of the devices stacked on dev, directly
// or through others (a multipath map on its paths, an md array on its
// members, a dm device on its table's devices).
func holdersOf(major, minor uint32) map[uint64]bool {
	out := map[uint64]bool{}
	var walk func(major, minor uint32, depth int)
	walk = func(major, minor uint32, depth int) {
		if depth > 16 {
			return
		}
		ents, err := os.ReadDir(filepath.Join(sysRoot, "dev", "block", fmt.Sprintf("%d:%d", major, minor), "holders"))
		if err != nil {
			return
		}
		for _, e := range ents {
			ma, mi, err := readDevNumber(filepath.Join(sysRoot, "class", "block", e.Name(), "dev"))
			if err != nil {
				continue
			}
			k := unix.Mkdev(ma, mi)
			if !out[k] {
				out[k] = true
				walk(ma, mi, depth+1)
			}
		}
	}
	walk(major, minor, 0)
	return out
}
