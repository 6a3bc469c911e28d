package lvm

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// HostConfig is what this package takes from the host's lvm.conf: where lvm
// keeps its lock files, and which devices lvm would read when it scans.
type HostConfig struct {
	LockingDir string // global/locking_dir
	// DevicesFile is the devices file lvm uses (devices/use_devicesfile=1 and
	// the file exists), or "". When it is set, lvm ignores both filters.
	DevicesFile  string
	Filter       *Filter // devices/filter; nil when unset
	GlobalFilter *Filter // devices/global_filter; nil when unset
}

// lvm2's defaults (lib/config/defaults.h).
const (
	defaultSystemDir   = "/etc/lvm"
	defaultLockingDir  = "/run/lock/lvm"
	defaultDevicesFile = "system.devices"
)

// LoadHostConfig reads lvm.conf, then lvmlocal.conf over it, from
// $LVM_SYSTEM_DIR (default /etc/lvm), as lvm does; missing files leave lvm's
// defaults.
func LoadHostConfig() (*HostConfig, error) {
	dir := os.Getenv("LVM_SYSTEM_DIR")
	if dir == "" {
		dir = defaultSystemDir
	}
	var roots []*ConfigNode
	for _, name := range []string{"lvmlocal.conf", "lvm.conf"} { // the first one found wins
		path := filepath.Join(dir, name)
		text, err := os.ReadFile(path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("lvm configuration: %w", err)
		}
		root, err := ParseConfig(text)
		if err != nil {
			return nil, fmt.Errorf("lvm configuration %s: %w", path, err)
		}
		roots = append(roots, root)
	}
	lookup := func(section, key string) *ConfigNode {
		for _, root := range roots {
			if n := findPath(root, section, key); n != nil {
				return n
			}
		}
		return nil
	}
	str := func(section, key, def string) string {
		if n := lookup(section, key); n != nil && !n.IsSection() && n.Values[0].Kind == KindString {
			return n.Values[0].Str
		}
		return def
	}
	cfg := &HostConfig{LockingDir: str("global", "locking_dir", defaultLockingDir)}
	if n := lookup("devices", "use_devicesfile"); n != nil && !n.IsSection() && n.Values[0].Kind == KindInt && n.Values[0].Int != 0 {
		name := str("devices", "devicesfile", defaultDevicesFile)
		if name == "" || strings.Contains(name, "/") {
			return nil, fmt.Errorf("lvm configuration: devices/devicesfile %q is not a file name", name)
		}
		// lvm uses no devices file when there is none (dev-cache.c setup_devices_file).
		path := filepath.Join(dir, "devices", name)
		if _, err := os.Stat(path); err == nil {
			cfg.DevicesFile = path
		}
	}
	for _, f := range []struct {
		key string
		dst **Filter
	}{{"filter", &cfg.Filter}, {"global_filter", &cfg.GlobalFilter}} {
		n := lookup("devices", f.key)
		if n == nil || n.IsSection() {
			continue
		}
		patterns, err := readStrings(n.Values, "devices/"+f.key)
		if err != nil {
			return nil, fmt.Errorf("lvm configuration: %w", err)
		}
		if *f.dst, err = ParseFilter(patterns); err != nil {
			return nil, fmt.Errorf("lvm configuration: devices/%s: %w", f.key, err)
		}
	}
	return cfg, nil
}

// findPath finds section/key in a parsed configuration, whether written as
// nested sections or as a path key ("devices/filter = ...").
func findPath(root *ConfigNode, section, key string) *ConfigNode {
	for _, c := range root.Children {
		if c.Key == section && c.IsSection() {
			if n := c.Find(key); n != nil {
				return n
			}
		}
	}
	return nil
}
