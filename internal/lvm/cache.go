package lvm

import (
	"context"
	"fmt"
	"slices"
	"sync"
)

// areaSource is the metadata area a VG was read from, and the committed
// location its header gave then.
type areaSource struct {
	cand      candidate
	rdev      uint64 // 0 for an image file
	offset    uint64 // of the mda header on the device
	committed RawLocn
}

// Cache keeps each VG's parse for as long as the metadata area it came from
// still holds the same committed text: a commit by lvm, on this host or
// another, rewrites that area's header with a new location and checksum of
// the text (the header carries no seqno; its location moves on with every
// commit). Checking is one read of that 512-byte header instead of reading
// and parsing every copy: a VG with thousands of LVs has megabytes of text.
//
// The VGs it returns are shared: callers must not change them.
type Cache struct {
	mu  sync.Mutex
	vgs map[string]cacheEntry
}

type cacheEntry struct {
	vg      *VG
	devices []string // what the VG was read from
}

// NewCache returns an empty cache.
func NewCache() *Cache { return &Cache{vgs: map[string]cacheEntry{}} }

// ReadVG is ReadVG through the cache: the cached VG when it was read from the
// same devices (nil devices: whatever it was read from) and its metadata
// area's header is unchanged; else a full read, which then replaces it.
// cached tells which.
func (c *Cache) ReadVG(ctx context.Context, vgName string, devices []string) (vg *VG, cached bool, err error) {
	c.mu.Lock()
	e, ok := c.vgs[vgName]
	c.mu.Unlock()
	if ok && (devices == nil || slices.Equal(devices, e.devices)) {
		same, err := bounded(ctx, e.vg.src.cand.path, e.vg.src.unchanged)
		if err == nil && same {
			return e.vg, true, nil
		}
		devices = e.devices
	}
	if devices == nil {
		return nil, false, fmt.Errorf("VG %s: no devices given and none cached: %w", vgName, ErrVGNotFound)
	}
	vg, err = ReadVG(ctx, vgName, devices)
	if err != nil {
		return nil, false, err
	}
	c.Put(vg, devices)
	return vg, false, nil
}

// Put caches vg, read from devices (ScanVG's: vg.DevicePaths()).
func (c *Cache) Put(vg *VG, devices []string) {
	c.mu.Lock()
	c.vgs[vg.Name] = cacheEntry{vg: vg, devices: slices.Clone(devices)}
	c.mu.Unlock()
}

// unchanged reads the area's header again and tells whether it still points
// at the same committed text on the same device.
func (s *areaSource) unchanged() bool {
	d, _, err := openCandidate(s.cand)
	if err != nil {
		return false
	}
	defer d.close()
	if d.rdev != s.rdev {
		return false
	}
	buf, err := d.readAt(s.offset, mdaHeaderSize)
	if err != nil {
		return false
	}
	h, err := ParseMDAHeader(buf, s.offset)
	return err == nil && h.Committed == s.committed
}
