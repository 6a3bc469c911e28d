package lvm

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
)

// ErrVGNotFound is wrapped by ReadVG when no device holds metadata of the VG.
var ErrVGNotFound = errors.New("VG not found")

// ErrNoAnswer is wrapped for a device whose read did not return by the
// deadline, or whose read from an earlier call is still pending.
var ErrNoAnswer = errors.New("device did not answer in time")

// scanParallel is how many devices are read at once.
const scanParallel = 8

// devResult is one device read for ReadVG.
type devResult struct {
	cand    candidate
	info    DeviceInfo
	err     error // opening or label; ErrNoLabel for non-PVs
	tmpNode bool
	rdev    uint64
}

// ReadVG reads and parses the newest committed metadata of VG vgName from the
// given devices (paths of block devices, or image files), and only from them.
// Each device's read ends with ctx: a device that has not answered by then
// (a dead path of a multipath map queueing I/O) counts as unreadable.
//
// Every metadata area on the devices that holds the VG is read with O_DIRECT
// and checksummed; the copy with the highest seqno wins, as in lvm. Copies that
// are older, unreadable or corrupt, and PVs not found, go to VG.Warnings; they
// fail the read only when no good copy is left. Each PV of the VG gets the
// device that carries its uuid on this host (PV.Device, Major, Minor), which
// Table uses.
func ReadVG(ctx context.Context, vgName string, devices []string) (*VG, error) {
	if err := checkName(vgName); err != nil {
		return nil, fmt.Errorf("VG name: %w", err)
	}
	cands := make([]candidate, len(devices))
	for i, p := range devices {
		cands[i] = candidate{path: p}
	}
	return assemble(vgName, readCandidates(ctx, cands, vgName), true)
}

// ScanVG is ReadVG from every block device of this host that lvm would scan
// with configuration cfg (see scanBlockDevices).
func ScanVG(ctx context.Context, vgName string, cfg *HostConfig) (*VG, error) {
	if err := checkName(vgName); err != nil {
		return nil, fmt.Errorf("VG name: %w", err)
	}
	cands, _, err := scanBlockDevices(cfg)
	if err != nil {
		return nil, err
	}
	return assemble(vgName, readCandidates(ctx, cands, vgName), false)
}

func readCandidates(ctx context.Context, cands []candidate, vgName string) []*devResult {
	results := make([]*devResult, len(cands))
	sem := make(chan struct{}, scanParallel)
	var wg sync.WaitGroup
	for i, c := range cands {
		wg.Add(1)
		sem <- struct{}{} // bounded returns by the deadline, so slots come back
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			r, err := bounded(ctx, c.path, func() *devResult { return readCandidate(c, vgName) })
			if err != nil {
				r = &devResult{cand: c, info: DeviceInfo{Path: c.path}, err: err}
			}
			results[i] = r
		}()
	}
	wg.Wait()
	return results
}

// pending holds the reads a deadline left behind, by device path: a read
// from a dead path returns when the path does, maybe never.
var pending = struct {
	sync.Mutex
	m map[string]*boundedRead
}{m: map[string]*boundedRead{}}

type boundedRead struct {
	finished, abandoned bool // under pending's lock
}

// bounded runs read in a goroutine of its own and waits for it until ctx
// ends. While a read it gave up on has not returned, later calls for the
// same key fail at once rather than pile up goroutines blocked on it.
func bounded[T any](ctx context.Context, key string, read func() T) (T, error) {
	var zero T
	pending.Lock()
	_, stuck := pending.m[key]
	pending.Unlock()
	if stuck {
		return zero, fmt.Errorf("%s: %w: a read started by an earlier deadline has not returned", key, ErrNoAnswer)
	}
	if err := ctx.Err(); err != nil {
		return zero, fmt.Errorf("%s: %w: %w", key, ErrNoAnswer, err)
	}
	b := &boundedRead{}
	var out T
	done := make(chan struct{})
	go func() {
		v := read()
		pending.Lock()
		out, b.finished = v, true
		if b.abandoned {
			delete(pending.m, key)
		}
		pending.Unlock()
		close(done)
	}()
	select {
	case <-done:
		return out, nil
	case <-ctx.Done():
	}
	pending.Lock()
	defer pending.Unlock()
	if b.finished {
		return out, nil
	}
	b.abandoned = true
	pending.m[key] = b
	return zero, fmt.Errorf("%s: %w: %w", key, ErrNoAnswer, ctx.Err())
}

func readCandidate(c candidate, vgName string) *devResult {
	r := &devResult{cand: c, info: DeviceInfo{Path: c.path}}
	d, tmp, err := openCandidate(c)
	if err != nil {
		r.err = err
		return r
	}
	defer d.close()
	r.tmpNode = tmp
	r.info.IsBlock, r.info.Direct = d.isBlk, d.direct
	if d.isBlk {
		r.rdev = d.rdev
		r.info.Major, r.info.Minor = devMajor(d.rdev), devMinor(d.rdev)
	}
	r.err = readDevice(d, &r.info, vgName)
	return r
}

// copyRef is one metadata area holding the VG, with its parse.
type copyRef struct {
	dev  *devResult
	area *AreaInfo
	vg   *VG
	err  error
}

func assemble(vgName string, results []*devResult, explicit bool) (*VG, error) {
	var warnings []string
	warn := func(format string, a ...any) { warnings = append(warnings, fmt.Sprintf(format, a...)) }

	// The same device named twice (a /dev/mapper link and its /dev/dm-N).
	seen := map[uint64]string{}
	var devs []*devResult
	for _, r := range results {
		if r.rdev != 0 {
			if first, dup := seen[r.rdev]; dup {
				if explicit {
					warn("%s is the same device as %s", r.info.Path, first)
				}
				continue
			}
			seen[r.rdev] = r.info.Path
		}
		devs = append(devs, r)
		if r.err != nil && (explicit || errors.Is(r.err, ErrNoAnswer)) {
			if errors.Is(r.err, ErrNoLabel) {
				warn("%s: %v", r.info.Path, r.err)
			} else {
				warn("%v", r.err)
			}
		}
	}

	// Parse each distinct text once. The key is the text itself: a checksum
	// is only a CRC-32, and two texts with the same one must not share a parse.
	type parsed struct {
		vg  *VG
		err error
	}
	byText := map[string]*parsed{}
	var copies []*copyRef
	for _, r := range devs {
		if r.err != nil || r.info.Label == nil {
			continue
		}
		for i := range r.info.Areas {
			a := &r.info.Areas[i]
			if a.VGName != vgName {
				continue
			}
			c := &copyRef{dev: r, area: a}
			copies = append(copies, c)
			if a.Err != nil {
				c.err = a.Err
				continue
			}
			if a.text == nil {
				continue
			}
			p := byText[string(a.text)]
			if p == nil {
				vg, err := ParseMetadata(a.text)
				p = &parsed{vg: vg, err: err}
				byText[string(a.text)] = p
			}
			c.vg, c.err = p.vg, p.err
			if c.err == nil && c.vg.Name != vgName {
				c.vg, c.err = nil, fmt.Errorf("text names VG %q", c.vg.Name)
			}
			if c.err == nil && !c.vg.hasPVID(r.info.Label.PVID) {
				c.vg, c.err = nil, fmt.Errorf("device's PV uuid %s is not a PV of this metadata", FormatID(r.info.Label.PVID))
			}
		}
	}

	var best *copyRef
	for _, c := range copies {
		if c.vg == nil {
			continue
		}
		if best == nil || c.vg.Seqno > best.vg.Seqno {
			best = c
		}
	}
	if best == nil {
		var errs multiError
		for _, c := range copies {
			if c.err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", c.dev.info.Path, c.err))
			}
		}
		haveCopies := len(errs) > 0
		// Areas that could not be read may have held it too.
		for _, r := range devs {
			for _, a := range r.info.Areas {
				if a.Err != nil && a.VGName != vgName {
					errs = append(errs, fmt.Errorf("%s: %w", r.info.Path, a.Err))
				}
			}
		}
		if haveCopies {
			return nil, fmt.Errorf("VG %s: no usable metadata: %w", vgName, errs)
		}
		if len(errs) > 0 {
			return nil, fmt.Errorf("VG %s: no metadata on %s; unreadable metadata areas: %w",
				vgName, describeSearch(devs, explicit), append(errs, ErrVGNotFound))
		}
		return nil, fmt.Errorf("VG %s: no metadata on %s: %w", vgName, describeSearch(devs, explicit), ErrVGNotFound)
	}
	vg := best.vg
	for _, c := range copies {
		if c.vg == nil || c.vg == vg {
			continue
		}
		if c.vg.rawID != vg.rawID {
			return nil, fmt.Errorf("two different VGs named %s: uuid %s (seqno %d on %s) and %s (seqno %d on %s)",
				vgName, vg.ID, vg.Seqno, best.dev.info.Path, c.vg.ID, c.vg.Seqno, c.dev.info.Path)
		}
	}

	// Record every copy and what was wrong with the others.
	for _, c := range copies {
		mc := MetadataCopy{
			Device:   c.dev.info.Path,
			PVID:     FormatID(c.dev.info.Label.PVID),
			Area:     c.area.Index,
			Location: c.area.Text,
			Err:      c.err,
			Used:     c == best,
		}
		switch {
		case c.err != nil:
			warn("%s mda%d: %v", mc.Device, mc.Area, c.err)
		case c.vg.Seqno < vg.Seqno:
			warn("%s mda%d: stale metadata, seqno %d, newest is %d on %s", mc.Device, mc.Area, c.vg.Seqno, vg.Seqno, best.dev.info.Path)
		case c.vg != vg:
			warn("%s mda%d: metadata with the same seqno %d differs from that on %s (checksum %#08x vs %#08x)",
				mc.Device, mc.Area, vg.Seqno, best.dev.info.Path, c.area.Text.Checksum, best.area.Text.Checksum)
		}
		if c.vg != nil {
			mc.Seqno = c.vg.Seqno
		}
		vg.Copies = append(vg.Copies, mc)
	}

	// Find each PV's device on this host.
	byPVID := map[string][]*devResult{}
	for _, r := range devs {
		if r.err == nil && r.info.Label != nil {
			byPVID[r.info.Label.PVID] = append(byPVID[r.info.Label.PVID], r)
		}
	}
	for i := range vg.PVs {
		pv := &vg.PVs[i]
		found := preferStacked(byPVID[pv.rawID])
		if len(found) == 0 {
			warn("PV %s (uuid %s, last seen as %s) not found on this host", pv.Name, pv.ID, pv.DeviceHint)
			continue
		}
		r := found[0]
		pv.Device, pv.IsBlock, pv.DeviceSize = r.info.Path, r.info.IsBlock, r.info.Size
		pv.Major, pv.Minor = r.info.Major, r.info.Minor
		for _, o := range found[1:] {
			pv.Duplicates = append(pv.Duplicates, o.info.Path)
		}
		if len(pv.Duplicates) > 0 {
			warn("PV %s (uuid %s) found on several devices: %s, %s", pv.Name, pv.ID, pv.Device, strings.Join(pv.Duplicates, ", "))
		}
		if r.tmpNode {
			warn("PV %s: %s (%d:%d) has no /dev node; read through a temporary one", pv.Name, pv.Device, pv.Major, pv.Minor)
		}
		for _, a := range r.info.Areas {
			if a.Err != nil && a.VGName != vgName {
				warn("%s mda%d: %v", r.info.Path, a.Index, a.Err)
			}
		}
	}
	vg.Warnings = warnings
	vg.src = &areaSource{cand: best.dev.cand, rdev: best.dev.rdev, offset: best.area.Locn.Offset, committed: best.area.Header.Committed}
	return vg, nil
}

func (vg *VG) hasPVID(raw string) bool {
	for i := range vg.PVs {
		if vg.PVs[i].rawID == raw {
			return true
		}
	}
	return false
}

// preferStacked drops, from devices carrying the same PV uuid, those that are
// below another of them (the paths of a multipath map, the legs of an md
// array): lvm uses the top device.
func preferStacked(devs []*devResult) []*devResult {
	if len(devs) < 2 {
		return devs
	}
	below := map[*devResult]bool{}
	for _, r := range devs {
		if r.rdev == 0 {
			continue
		}
		holders := holdersOf(r.info.Major, r.info.Minor)
		for _, o := range devs {
			if o != r && holders[o.rdev] {
				below[r] = true
			}
		}
	}
	var out []*devResult
	for _, r := range devs {
		if !below[r] {
			out = append(out, r)
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].info.Path < out[j].info.Path })
	return out
}

func describeSearch(devs []*devResult, explicit bool) string {
	if !explicit {
		n := 0
		for _, r := range devs {
			if r.info.Label != nil {
				n++
			}
		}
		return fmt.Sprintf("the %d block devices scanned (%d of them PVs)", len(devs), n)
	}
	paths := make([]string, len(devs))
	for i, r := range devs {
		paths[i] = r.info.Path
	}
	return strings.Join(paths, ", ")
}

// DevicePaths are the paths of the VG's PVs found on this host, to pass to a
// later ReadVG instead of scanning every device again. A PV added to the VG
// since is then missing: when Table fails with ErrPVMissing, scan again.
func (vg *VG) DevicePaths() []string {
	var out []string
	for _, pv := range vg.PVs {
		if pv.Device != "" {
			out = append(out, pv.Device)
		}
	}
	return out
}

// multiError is several errors in one line, each reachable by errors.Is/As.
type multiError []error

func (m multiError) Error() string {
	s := make([]string, len(m))
	for i, e := range m {
		s[i] = e.Error()
	}
	return strings.Join(s, "; ")
}

func (m multiError) Unwrap() []error { return m }
