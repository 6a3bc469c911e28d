package lvm

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Filter is an lvm.conf device filter: patterns "a|regex|" (accept) or
// "r|regex|" (reject), tried in order on each of a device's names.
type Filter struct {
	accept []bool
	res    []*regexp.Regexp
}

// ParseFilter compiles lvm.conf filter patterns as lvm2's regex filter reads
// them (lib/filters/filter-regex.c): 'a' or 'r', a delimiter ("(", "[" and
// "{" close with their pair), the regex, the same delimiter last.
func ParseFilter(patterns []string) (*Filter, error) {
	f := &Filter{}
	for _, p := range patterns {
		if len(p) < 3 || p[0] != 'a' && p[0] != 'r' {
			return nil, fmt.Errorf("pattern %q: must start with 'a' or 'r' and a delimiter", truncate(p))
		}
		open := p[1]
		closing := map[byte]byte{'(': ')', '[': ']', '{': '}'}[open]
		if closing == 0 {
			closing = open
		}
		if p[len(p)-1] != closing {
			return nil, fmt.Errorf("pattern %q: does not end with its delimiter %q", truncate(p), closing)
		}
		re, err := regexp.Compile(p[2 : len(p)-1])
		if err != nil {
			return nil, fmt.Errorf("pattern %q: %w", truncate(p), err)
		}
		f.accept = append(f.accept, p[0] == 'a')
		f.res = append(f.res, re)
	}
	return f, nil
}

// Accepts applies the filter to a device known by names, as lvm2 does: for
// each name the first pattern that matches decides; an accepted name accepts
// the device, and a device none of whose names matches anything is accepted.
func (f *Filter) Accepts(names []string) bool {
	if f == nil {
		return true
	}
	rejected := false
	for _, name := range names {
		for i, re := range f.res {
			if re.MatchString(name) {
				if f.accept[i] {
					return true
				}
				rejected = true
				break
			}
		}
	}
	return !rejected
}

// DeviceID is one entry of lvm's devices file: how lvm recognises a device
// (lib/device/device_id.c), and the PV uuid it last saw there.
type DeviceID struct {
	Type, Name string // IDTYPE, IDNAME
	DevName    string // DEVNAME: the last name seen; only a hint
	PVID       string
	Part       int // PART: partition number, 0 for the whole device
}

// ParseDevicesFile reads a devices file: one device a line as KEY=VALUE
// fields; comments (#) and lines without IDTYPE (VERSION=, SYSTEMID=) are
// skipped.
func ParseDevicesFile(text []byte) ([]DeviceID, error) {
	var ids []DeviceID
	sc := bufio.NewScanner(bytes.NewReader(text))
	sc.Buffer(nil, 64<<10)
	for line := 1; sc.Scan(); line++ {
		fields := strings.Fields(sc.Text())
		if len(fields) == 0 || strings.HasPrefix(fields[0], "#") {
			continue
		}
		var id DeviceID
		for _, f := range fields {
			k, v, ok := strings.Cut(f, "=")
			if !ok {
				return nil, fmt.Errorf("devices file line %d: field %q is not KEY=VALUE", line, truncate(f))
			}
			switch k {
			case "IDTYPE":
				id.Type = v
			case "IDNAME":
				id.Name = v
			case "DEVNAME":
				id.DevName = v
			case "PVID":
				id.PVID = v
			case "PART":
				n, err := strconv.Atoi(v)
				if err != nil || n < 0 {
					return nil, fmt.Errorf("devices file line %d: PART=%q", line, truncate(v))
				}
				id.Part = n
			}
		}
		if id.Type == "" {
			continue
		}
		if id.Name == "" || id.Name == "." {
			return nil, fmt.Errorf("devices file line %d: %s entry without IDNAME", line, truncate(id.Type))
		}
		ids = append(ids, id)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("devices file: %w", err)
	}
	return ids, nil
}

// sysDevice is a block device as sysfs shows it, for matching devices file
// entries and filters.
type sysDevice struct {
	name  string   // sysfs name: sda, dm-3, loop0
	names []string // its paths under /dev
}

// ids are the device's identifiers of each devices file type this package
// knows, keyed by IDTYPE; a partition is identified by its whole device's
// ids and its number.
func (d sysDevice) ids() (map[string]string, int) {
	base := filepath.Join(sysRoot, "class", "block", d.name)
	part := 0
	if p, err := readSysUint(filepath.Join(base, "partition")); err == nil {
		part = int(p)
		// A partition's sysfs directory sits inside its disk's.
		if target, err := filepath.EvalSymlinks(base); err == nil {
			base = filepath.Dir(target)
		}
	}
	ids := map[string]string{}
	set := func(typ, v string) {
		if v = strings.Join(strings.Fields(v), "_"); v != "" { // as lvm writes it in the file
			ids[typ] = v
		}
	}
	set("sys_wwid", readSysString(filepath.Join(base, "device", "wwid")))
	if ids["sys_wwid"] == "" {
		set("sys_wwid", readSysString(filepath.Join(base, "wwid")))
	}
	set("sys_serial", readSysString(filepath.Join(base, "device", "serial")))
	set("md_uuid", readSysString(filepath.Join(base, "md", "uuid")))
	set("loop_file", readSysString(filepath.Join(base, "loop", "backing_file")))
	uuid := readSysString(filepath.Join(base, "dm", "uuid"))
	for prefix, typ := range map[string]string{"mpath-": "mpath_uuid", "CRYPT-": "crypt_uuid", "LVM-": "lvmlv_uuid"} {
		if strings.HasPrefix(uuid, prefix) {
			set(typ, uuid)
		}
	}
	return ids, part
}

// listed tells whether the devices file has an entry for the device.
func (d sysDevice) listed(entries []DeviceID) bool {
	ids, part := d.ids()
	for _, e := range entries {
		if e.Type == "devname" {
			for _, n := range d.names {
				if n == e.Name {
					return true
				}
			}
			continue
		}
		if e.Part == part && ids[e.Type] != "" && ids[e.Type] == e.Name {
			return true
		}
	}
	return false
}

// aliasDirs are where a block device has names besides /dev/NAME.
var aliasDirs = []string{"/dev/mapper", "/dev/md", "/dev/block", "/dev/disk/by-id", "/dev/disk/by-path",
	"/dev/disk/by-uuid", "/dev/disk/by-partuuid", "/dev/disk/by-label", "/dev/disk/by-partlabel"}

// devAliases maps device numbers to the paths under /dev that name them,
// as lvm collects them from /dev when it does not ask udev.
func devAliases() map[uint64][]string {
	out := map[uint64][]string{}
	for _, dir := range aliasDirs {
		ents, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, e := range ents {
			p := filepath.Join(dir, e.Name())
			var st unix.Stat_t
			if unix.Stat(p, &st) == nil && st.Mode&unix.S_IFMT == unix.S_IFBLK {
				out[st.Rdev] = append(out[st.Rdev], p)
			}
		}
	}
	return out
}

// selector decides which scanned devices lvm would read: those its devices
// file lists when it has one, else those both filters accept.
type selector struct {
	cfg     *HostConfig
	entries []DeviceID
	aliases map[uint64][]string
}

func newSelector(cfg *HostConfig) (*selector, error) {
	s := &selector{cfg: cfg, aliases: devAliases()}
	if cfg.DevicesFile != "" {
		text, err := os.ReadFile(cfg.DevicesFile)
		if err != nil {
			return nil, fmt.Errorf("lvm devices file: %w", err)
		}
		if s.entries, err = ParseDevicesFile(text); err != nil {
			return nil, fmt.Errorf("%s: %w", cfg.DevicesFile, err)
		}
	}
	return s, nil
}

// why returns "" for a device lvm would read, else why it would not.
func (s *selector) why(name, node string, major, minor uint32) string {
	d := sysDevice{name: name, names: append([]string{node}, s.aliases[unix.Mkdev(major, minor)]...)}
	if s.cfg.DevicesFile != "" {
		if !d.listed(s.entries) {
			return "not in " + s.cfg.DevicesFile
		}
		return ""
	}
	if !s.cfg.GlobalFilter.Accepts(d.names) {
		return "rejected by devices/global_filter"
	}
	if !s.cfg.Filter.Accepts(d.names) {
		return "rejected by devices/filter"
	}
	return ""
}
