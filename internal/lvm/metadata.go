package lvm

import (
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
)

// VG is a volume group as its newest committed metadata describes it.
type VG struct {
	Name           string
	ID             string // uuid in lvm's display form (6-4-4-4-4-4-6)
	Seqno          uint64
	ExtentSize     uint64 // sectors
	Format         string
	Status, Flags  []string
	Tags           []string
	MetadataCopies uint64
	PVs            []PV
	LVs            []LV

	// Filled by ReadVG, empty for ParseMetadata.
	Copies   []MetadataCopy // every metadata area read for this VG
	Warnings []string       // disagreements and errors that did not stop the read

	rawID string
	src   *areaSource // the metadata area of the copy ReadVG used
}

// PV is a physical volume of the VG and, after ReadVG, where it is on this host.
type PV struct {
	Name       string // section name in the metadata: pv0, pv1, ...
	ID         string // uuid in display form
	DeviceHint string // "device" in the metadata: its path on the host that wrote it
	Status     []string
	Flags      []string
	Tags       []string
	DevSize    uint64 // sectors, as recorded in the metadata (0 if absent)
	PEStart    uint64 // sectors
	PECount    uint64

	// Filled by ReadVG: the PV's block device on this host.
	Device       string // path; "" if the PV was not found on this host
	Major, Minor uint32
	DeviceSize   uint64   // bytes, of the device found
	Duplicates   []string // other devices carrying the same PV uuid, if any
	IsBlock      bool     // Device is a block device (not an image file)

	rawID string
}

// LV is a logical volume.
type LV struct {
	Name   string
	ID     string // uuid in display form
	Status []string
	Flags  []string
	Tags   []string
	// Segments are the LV's segments sorted by start and merged as lvm merges
	// them when it imports metadata: this is lvm's in-core view, which
	// `lvs --segments` shows and from which it builds the dm table.
	Segments []Segment
	// SegmentCount is the number of segment sections in the metadata text.
	SegmentCount int
	CreationHost string
	CreationTime int64

	rawID string
}

// Segment is a contiguous range of an LV's logical extents.
type Segment struct {
	StartExtent uint64
	ExtentCount uint64
	Type        string // "striped" (also for linear, with one stripe), "linear", or another lvm type
	StripeCount uint64 // areas; 0 for types this package does not decode
	StripeSize  uint64 // sectors; 0 when StripeCount is 1
	Stripes     []Area
	Tags        []string
}

// Area is one stripe of a segment: a PV (by its section name) or, for layered
// LVs, another LV, and the extent it starts at there.
type Area struct {
	PV    string // pv0, ... ("" if the area is an LV)
	LV    string // the LV's name if the area is an LV
	Start uint64 // first extent on that PV or LV
}

// AreaLen is the number of extents the segment takes on each of its areas.
func (s *Segment) AreaLen() uint64 {
	if s.StripeCount == 0 {
		return s.ExtentCount
	}
	return s.ExtentCount / s.StripeCount
}

// MetadataCopy is one metadata area ReadVG read for the VG.
type MetadataCopy struct {
	Device   string
	PVID     string // of the device, display form
	Area     int    // 1 for the first metadata area of the device, 2 for the second
	Location TextLocation
	Seqno    uint64 // 0 if unreadable
	Err      error  // why this copy was not usable, nil if it was
	Used     bool   // this copy is the one ReadVG returned
}

// LV returns the LV called name.
func (vg *VG) LV(name string) (*LV, error) {
	for i := range vg.LVs {
		if vg.LVs[i].Name == name {
			return &vg.LVs[i], nil
		}
	}
	return nil, fmt.Errorf("VG %s has no LV %q (seqno %d): %w", vg.Name, name, vg.Seqno, ErrLVNotFound)
}

// PV returns the PV whose metadata section is called name (pv0, ...).
func (vg *VG) PV(name string) (*PV, error) {
	for i := range vg.PVs {
		if vg.PVs[i].Name == name {
			return &vg.PVs[i], nil
		}
	}
	return nil, fmt.Errorf("VG %s has no PV %q", vg.Name, name)
}

// ErrLVNotFound is wrapped by VG.LV for an LV the metadata does not have.
var ErrLVNotFound = errors.New("no such LV")

// Extents is the LV's length in extents.
func (lv *LV) Extents() uint64 {
	var n uint64
	for _, s := range lv.Segments {
		n += s.ExtentCount // bounded by ParseMetadata: no overflow
	}
	return n
}

// Sectors is the LV's length in 512-byte sectors.
func (lv *LV) Sectors(vg *VG) uint64 { return lv.Extents() * vg.ExtentSize }

// Size is the LV's size in bytes.
func (lv *LV) Size(vg *VG) uint64 { return lv.Sectors(vg) * sectorSize }

// LVSize is the size in bytes of the LV called name.
func (vg *VG) LVSize(name string) (uint64, error) {
	lv, err := vg.LV(name)
	if err != nil {
		return 0, err
	}
	return lv.Size(vg), nil
}

// HasStatus reports whether the LV has the flag in its status or flags list.
func (lv *LV) HasStatus(flag string) bool {
	return slices.Contains(lv.Status, flag) || slices.Contains(lv.Flags, flag)
}

// Limits that keep every sector computation within uint64 (lvm's own fields
// are 32-bit: extent size, extent counts, seqno).
const (
	maxExtentSize = math.MaxUint32
	maxExtents    = math.MaxUint32
)

const (
	contentsValue = "Text Format Volume Group"
	formatVersion = 1
)

// ParseMetadata parses one VG metadata text as lvm2 writes it into metadata
// areas and backup files, checking it as lvm2 does when it imports metadata,
// and merges each LV's segments the way lvm2 does.
func ParseMetadata(text []byte) (*VG, error) {
	root, err := ParseConfig(text)
	if err != nil {
		return nil, fmt.Errorf("metadata: %w", err)
	}
	return vgFromConfig(root)
}

func vgFromConfig(root *ConfigNode) (*VG, error) {
	if c, ok := root.Str("contents"); !ok || c != contentsValue {
		return nil, errors.New("metadata: missing or unrecognised contents field")
	}
	if v, ok := root.Int("version"); !ok || v != formatVersion {
		return nil, errors.New("metadata: missing or unrecognised version")
	}
	var vgn *ConfigNode
	for _, c := range root.Children {
		if c.IsSection() {
			vgn = c
			break
		}
	}
	if vgn == nil {
		return nil, errors.New("metadata: no volume group section")
	}
	if err := checkName(vgn.Key); err != nil {
		return nil, fmt.Errorf("metadata: VG name: %w", err)
	}
	vg := &VG{Name: vgn.Key}
	var err error
	errf := func(format string, a ...any) error {
		return fmt.Errorf("metadata of VG %s: %s", vg.Name, fmt.Sprintf(format, a...))
	}
	if vg.rawID, err = readID(vgn, "id"); err != nil {
		return nil, errf("%v", err)
	}
	vg.ID = FormatID(vg.rawID)
	if vg.Seqno, err = readUint(vgn, "seqno", math.MaxUint32); err != nil {
		return nil, errf("%v", err)
	}
	vg.Format, _ = vgn.Str("format")
	if vg.Status, vg.Flags, err = readFlags(vgn); err != nil {
		return nil, errf("%v", err)
	}
	if vg.ExtentSize, err = readUint(vgn, "extent_size", maxExtentSize); err != nil {
		return nil, errf("%v", err)
	}
	if vg.ExtentSize == 0 {
		return nil, errf("extent_size is 0")
	}
	for _, k := range []string{"max_lv", "max_pv"} {
		if _, err := readUint(vgn, k, math.MaxUint32); err != nil {
			return nil, errf("%v", err)
		}
	}
	if vgn.Find("metadata_copies") != nil {
		if vg.MetadataCopies, err = readUint(vgn, "metadata_copies", math.MaxUint32); err != nil {
			return nil, errf("%v", err)
		}
	}
	if vg.Tags, err = readTags(vgn); err != nil {
		return nil, errf("%v", err)
	}

	pvs, ok := vgn.Section("physical_volumes")
	if !ok {
		return nil, errf("no physical_volumes section")
	}
	pvIndex := map[string]int{}
	pvIDs := map[string]string{}
	for _, pvn := range pvs.Children {
		pv, err := readPV(pvn, vg.ExtentSize)
		if err != nil {
			return nil, errf("physical volume %s: %v", truncate(pvn.Key), err)
		}
		if _, dup := pvIndex[pv.Name]; dup {
			return nil, errf("physical volume %s listed twice", pv.Name)
		}
		if other, dup := pvIDs[pv.rawID]; dup {
			return nil, errf("physical volumes %s and %s have the same uuid %s", other, pv.Name, pv.ID)
		}
		pvIndex[pv.Name] = len(vg.PVs)
		pvIDs[pv.rawID] = pv.Name
		vg.PVs = append(vg.PVs, *pv)
	}

	if lvs, ok := vgn.Section("logical_volumes"); ok {
		lvIndex := map[string]int{}
		for _, lvn := range lvs.Children {
			lv, err := readLV(lvn)
			if err != nil {
				return nil, errf("logical volume %s: %v", truncate(lvn.Key), err)
			}
			if _, dup := lvIndex[lv.Name]; dup {
				return nil, errf("logical volume %s listed twice", lv.Name)
			}
			lvIndex[lv.Name] = len(vg.LVs)
			vg.LVs = append(vg.LVs, *lv)
		}
		for i := range vg.LVs {
			lv := &vg.LVs[i]
			if err := vg.checkAreas(lv, pvIndex, lvIndex); err != nil {
				return nil, errf("logical volume %s: %v", lv.Name, err)
			}
			if s, ok := mul64(lv.Extents(), vg.ExtentSize); !ok || s > math.MaxInt64/sectorSize {
				return nil, errf("logical volume %s: %d extents of %d sectors is too large", lv.Name, lv.Extents(), vg.ExtentSize)
			}
		}
		users := vg.lvUsers()
		for i := range vg.LVs {
			vg.mergeSegments(&vg.LVs[i], users)
		}
	}
	return vg, nil
}

func readPV(pvn *ConfigNode, extentSize uint64) (*PV, error) {
	if !pvn.IsSection() || len(pvn.Children) == 0 {
		return nil, errors.New("empty or not a section")
	}
	pv := &PV{Name: pvn.Key}
	var err error
	if pv.rawID, err = readID(pvn, "id"); err != nil {
		return nil, err
	}
	pv.ID = FormatID(pv.rawID)
	if pv.Status, pv.Flags, err = readFlags(pvn); err != nil {
		return nil, err
	}
	if pvn.Find("dev_size") != nil {
		if pv.DevSize, err = readUint(pvn, "dev_size", math.MaxInt64/sectorSize); err != nil {
			return nil, err
		}
	}
	pv.DeviceHint, _ = pvn.Str("device")
	if pv.PEStart, err = readUint(pvn, "pe_start", math.MaxInt64/sectorSize); err != nil {
		return nil, err
	}
	if pv.PECount, err = readUint(pvn, "pe_count", maxExtents); err != nil {
		return nil, err
	}
	// The last extent must end on an addressable sector.
	if end, ok := mul64(pv.PECount, extentSize); !ok || end > math.MaxInt64/sectorSize-pv.PEStart {
		return nil, fmt.Errorf("pe_start %d + pe_count %d extents of %d sectors overflows", pv.PEStart, pv.PECount, extentSize)
	}
	if pv.Tags, err = readTags(pvn); err != nil {
		return nil, err
	}
	return pv, nil
}

func readLV(lvn *ConfigNode) (*LV, error) {
	if !lvn.IsSection() || len(lvn.Children) == 0 {
		return nil, errors.New("empty or not a section")
	}
	if err := checkName(lvn.Key); err != nil {
		return nil, err
	}
	lv := &LV{Name: lvn.Key}
	var err error
	if lv.rawID, err = readID(lvn, "id"); err != nil {
		return nil, err
	}
	lv.ID = FormatID(lv.rawID)
	if lv.Status, lv.Flags, err = readFlags(lvn); err != nil {
		return nil, err
	}
	if lvn.Find("creation_time") != nil {
		t, ok := lvn.Int("creation_time")
		if !ok {
			return nil, errors.New("invalid creation_time")
		}
		lv.CreationTime = t
		if lv.CreationHost, ok = lvn.Str("creation_host"); !ok {
			return nil, errors.New("creation_time without creation_host")
		}
	} else if lvn.Find("creation_host") != nil {
		return nil, errors.New("creation_host without creation_time")
	}
	if lv.Tags, err = readTags(lvn); err != nil {
		return nil, err
	}
	count, err := readUint(lvn, "segment_count", math.MaxUint32)
	if err != nil {
		return nil, err
	}
	// Every sub-section is a segment, whatever its name.
	for _, sn := range lvn.Children {
		if !sn.IsSection() {
			continue
		}
		seg, err := readSegment(sn)
		if err != nil {
			return nil, fmt.Errorf("segment %s: %v", truncate(sn.Key), err)
		}
		lv.Segments = append(lv.Segments, *seg)
	}
	lv.SegmentCount = len(lv.Segments)
	if uint64(lv.SegmentCount) != count {
		return nil, fmt.Errorf("segment_count %d but %d segments", count, lv.SegmentCount)
	}
	sort.SliceStable(lv.Segments, func(i, j int) bool { return lv.Segments[i].StartExtent < lv.Segments[j].StartExtent })
	// No gaps, no overlaps, from extent 0 (lvm2's check_lv_segments).
	var next uint64
	for _, s := range lv.Segments {
		if s.StartExtent != next {
			return nil, fmt.Errorf("segment at extent %d, expected one at %d", s.StartExtent, next)
		}
		next += s.ExtentCount
		if next > maxExtents {
			return nil, fmt.Errorf("more than %d extents", uint64(maxExtents))
		}
	}
	return lv, nil
}

func readSegment(sn *ConfigNode) (*Segment, error) {
	if len(sn.Children) == 0 {
		return nil, errors.New("empty segment section")
	}
	s := &Segment{}
	var err error
	if s.StartExtent, err = readUint(sn, "start_extent", maxExtents); err != nil {
		return nil, err
	}
	if s.ExtentCount, err = readUint(sn, "extent_count", maxExtents); err != nil {
		return nil, err
	}
	if s.ExtentCount == 0 {
		return nil, errors.New("extent_count is 0")
	}
	t, ok := sn.Str("type")
	if !ok {
		return nil, errors.New("segment type must be a string")
	}
	s.Type = t
	if s.Tags, err = readTags(sn); err != nil {
		return nil, err
	}
	if t != "striped" && t != "linear" {
		// Another lvm segment type (thin, raid, mirror, ...): kept by name
		// only; Table refuses it.
		return s, nil
	}
	if s.StripeCount, err = readUint(sn, "stripe_count", math.MaxUint32); err != nil {
		return nil, err
	}
	if s.StripeCount == 0 {
		return nil, errors.New("zero areas")
	}
	if s.StripeCount > 1 {
		if s.StripeSize, err = readUint(sn, "stripe_size", math.MaxUint32); err != nil {
			return nil, err
		}
		if s.StripeSize == 0 {
			return nil, errors.New("stripe_size is 0")
		}
	}
	if s.ExtentCount%s.StripeCount != 0 {
		return nil, fmt.Errorf("extent_count %d not a multiple of stripe_count %d", s.ExtentCount, s.StripeCount)
	}
	vals, ok := sn.List("stripes")
	if !ok {
		return nil, errors.New("no stripes array")
	}
	if uint64(len(vals)) != 2*s.StripeCount {
		return nil, fmt.Errorf("stripes has %d values, want %d (a volume and an extent per stripe)", len(vals), 2*s.StripeCount)
	}
	for i := 0; i < len(vals); i += 2 {
		if vals[i].Kind != KindString {
			return nil, fmt.Errorf("stripe %d: volume is a %v, not a string", i/2, vals[i].Kind)
		}
		if vals[i+1].Kind != KindInt || vals[i+1].Int < 0 || vals[i+1].Int > maxExtents {
			return nil, fmt.Errorf("stripe %d: bad start extent %v", i/2, vals[i+1])
		}
		s.Stripes = append(s.Stripes, Area{PV: vals[i].Str, Start: uint64(vals[i+1].Int)})
	}
	return s, nil
}

// checkAreas resolves each area to a PV or an LV, as lvm2's text_import_areas
// does (a PV name first), and checks that PV areas lie within the PV.
func (vg *VG) checkAreas(lv *LV, pvIndex, lvIndex map[string]int) error {
	for si := range lv.Segments {
		s := &lv.Segments[si]
		for ai := range s.Stripes {
			a := &s.Stripes[ai]
			if i, ok := pvIndex[a.PV]; ok {
				pv := &vg.PVs[i]
				if a.Start+s.AreaLen() > pv.PECount {
					return fmt.Errorf("segment at extent %d: stripe %d takes extents %d-%d of %s, which has %d",
						s.StartExtent, ai, a.Start, a.Start+s.AreaLen()-1, pv.Name, pv.PECount)
				}
				continue
			}
			if _, ok := lvIndex[a.PV]; ok {
				a.LV, a.PV = a.PV, ""
				continue
			}
			return fmt.Errorf("segment at extent %d: stripe %d on unknown volume %q", s.StartExtent, ai, truncate(a.PV))
		}
	}
	return nil
}

// mergeSegments merges adjacent segments of the LV the way lvm2 does when it
// imports metadata (lib/metadata/merge.c, striped.c): same type, same number
// of stripes and stripe size, same tags, and each stripe continuing on the
// same PV where the previous segment's stripe ended. LVs that a pvmove holds
// (LOCKED, PVMOVE, or mirror images of such) are left alone. users is
// vg.lvUsers().
func (vg *VG) mergeSegments(lv *LV, users map[string]*LV) {
	if lv.HasStatus("LOCKED") || lv.HasStatus("PVMOVE") {
		return
	}
	if lv.HasStatus("MIRROR_IMAGE") {
		if user := users[lv.Name]; user != nil && (user.HasStatus("LOCKED") || user.HasStatus("PVMOVE")) {
			return
		}
	}
	if len(lv.Segments) < 2 {
		return
	}
	out := lv.Segments[:1]
	for _, cur := range lv.Segments[1:] {
		prev := &out[len(out)-1]
		if canMerge(prev, &cur) {
			prev.ExtentCount += cur.ExtentCount
			continue
		}
		out = append(out, cur)
	}
	lv.Segments = slices.Clip(out)
}

// lvUsers maps the name of each LV that exactly one segment area uses as its
// volume to the LV that area belongs to (nil when several areas use it). One
// pass over the VG: a lookup per LV would be quadratic in hostile metadata.
func (vg *VG) lvUsers() map[string]*LV {
	users := map[string]*LV{}
	for i := range vg.LVs {
		for _, s := range vg.LVs[i].Segments {
			for _, a := range s.Stripes {
				if a.LV == "" {
					continue
				}
				if _, seen := users[a.LV]; seen {
					users[a.LV] = nil
				} else {
					users[a.LV] = &vg.LVs[i]
				}
			}
		}
	}
	return users
}

func canMerge(a, b *Segment) bool {
	if a.Type != b.Type || (a.Type != "striped" && a.Type != "linear") {
		return false
	}
	if a.StripeCount != b.StripeCount || a.StripeSize != b.StripeSize {
		return false
	}
	width := a.AreaLen()
	for i := range a.Stripes {
		x, y := a.Stripes[i], b.Stripes[i]
		if x.PV == "" || y.PV == "" || x.PV != y.PV || x.Start+width != y.Start {
			return false
		}
	}
	return sameStringSet(a.Tags, b.Tags)
}

// sameStringSet compares a and b as sets: lvm2 reads tag lists dropping
// repeats, so ["a", "a"] equals ["a"] but not ["a", "b"]. Maps keep hostile
// lists of many tags linear.
func sameStringSet(a, b []string) bool {
	if len(a) == 0 || len(b) == 0 {
		return len(a) == len(b)
	}
	set := func(l []string) map[string]bool {
		m := make(map[string]bool, len(l))
		for _, s := range l {
			m[s] = true
		}
		return m
	}
	sa, sb := set(a), set(b)
	if len(sa) != len(sb) {
		return false
	}
	for s := range sa {
		if !sb[s] {
			return false
		}
	}
	return true
}

func readID(n *ConfigNode, key string) (string, error) {
	s, ok := n.Str(key)
	if !ok {
		return "", fmt.Errorf("no %s", key)
	}
	return parseID(s)
}

// readUint reads an integer key that must lie in [0, max].
func readUint(n *ConfigNode, key string, max uint64) (uint64, error) {
	c := n.Find(key)
	if c == nil {
		return 0, fmt.Errorf("no %s", key)
	}
	v, ok := n.Int(key)
	if !ok {
		return 0, fmt.Errorf("%s is not an integer", key)
	}
	if v < 0 || uint64(v) > max {
		return 0, fmt.Errorf("%s = %d out of range [0, %d]", key, v, max)
	}
	return uint64(v), nil
}

func readStrings(vals []Value, what string) ([]string, error) {
	if len(vals) == 1 && vals[0].Kind == KindEmptyArray {
		return nil, nil
	}
	out := make([]string, 0, len(vals))
	for _, v := range vals {
		if v.Kind != KindString {
			return nil, fmt.Errorf("%s: a %v among strings", what, v.Kind)
		}
		out = append(out, v.Str)
	}
	return out, nil
}

func readFlags(n *ConfigNode) (status, flags []string, err error) {
	vals, ok := n.List("status")
	if !ok {
		return nil, nil, errors.New("no status flags")
	}
	if status, err = readStrings(vals, "status"); err != nil {
		return nil, nil, err
	}
	if vals, ok := n.List("flags"); ok {
		if flags, err = readStrings(vals, "flags"); err != nil {
			return nil, nil, err
		}
	}
	return status, flags, nil
}

func readTags(n *ConfigNode) ([]string, error) {
	vals, ok := n.List("tags")
	if !ok {
		return nil, nil
	}
	return readStrings(vals, "tags")
}

// checkName applies lvm2's rules for VG and LV names (validate_name): 1-127
// characters of a-z A-Z 0-9 + _ . -, not starting with '-', not "." or "..".
func checkName(name string) error {
	if name == "" || len(name) > 127 {
		return fmt.Errorf("name of %d characters", len(name))
	}
	if name[0] == '-' || name == "." || name == ".." {
		return fmt.Errorf("invalid name %q", truncate(name))
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' ||
			c == '+' || c == '_' || c == '.' || c == '-') {
			return fmt.Errorf("invalid character %q in name %q", c, truncate(name))
		}
	}
	return nil
}

// DMName is the device-mapper name lvm gives LV lv of VG vg: each part with
// its hyphens doubled, joined by a hyphen (libdm's dm_build_dm_name).
func DMName(vg, lv string) string {
	return strings.ReplaceAll(vg, "-", "--") + "-" + strings.ReplaceAll(lv, "-", "--")
}

// DMUUID is the device-mapper uuid lvm gives the LV: "LVM-", then the VG's and
// the LV's uuids without dashes.
func (vg *VG) DMUUID(lvName string) (string, error) {
	lv, err := vg.LV(lvName)
	if err != nil {
		return "", err
	}
	return "LVM-" + vg.rawID + lv.rawID, nil
}
