// Package refresh makes an LV's device-mapper table on this host match the
// LVM metadata on disk. After another host (the SPM) extends an LV, it reads
// the VG's metadata straight from the PVs, builds the table lvm would load and
// swaps it in with three ioctls: what `lvchange --refresh` does, in a few
// milliseconds instead of hundreds.
package refresh

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/blockdev"
	"github.com/lvwatch/lvwatch/internal/dm"
	"github.com/lvwatch/lvwatch/internal/lvm"
)

var (
	// ErrNotActive means the LV has no device-mapper device on this host.
	ErrNotActive = errors.New("LV not active on this host")
	// ErrShrink means the metadata is smaller than the live table: a live LV is never shrunk.
	ErrShrink = errors.New("refusing to shrink a live LV")
	// ErrRemap means the metadata maps sectors the live LV already has to other
	// places: not an extension. Loading it would show the VM other data.
	ErrRemap = errors.New("refusing to move data of a live LV")
	// ErrSuspended means something else (lvm itself, most likely) has the LV
	// suspended, or a table loaded for it, in the middle of its own change:
	// try again later.
	ErrSuspended = errors.New("LV is suspended by another process")
)

// Result is what a refresh did.
type Result struct {
	VG, LV           string
	Device           string   // the LV's block device, /dev/dm-N
	OldSize, NewSize uint64   // bytes: the live table's before, the metadata's
	Changed          bool     // a new table was swapped in
	Devices          []string // the VG's PVs on this host: pass them to the next Refresh of this VG
	Metadata         time.Duration
	Swap             time.Duration // load, suspend, resume; 0 when unchanged
	Total            time.Duration
}

// Refresher refreshes LVs through one device-mapper control node.
// It is safe for concurrent use on different LVs.
type Refresher struct {
	ctl *dm.Control
	log zerolog.Logger
}

// New returns a Refresher that logs, at debug level, what it loads.
func New(ctl *dm.Control, log zerolog.Logger) *Refresher {
	return &Refresher{ctl: ctl, log: log}
}

// Refresh makes the live table of LV lvName of VG vgName match the VG's
// metadata on disk. devices are the VG's PVs (Result.Devices of an earlier
// refresh), or nil to scan this host's block devices; when they no longer
// hold the whole VG, Refresh scans.
//
// A table equal to the metadata's is left alone. One that shrinks the LV or
// moves sectors it already maps is refused (ErrShrink, ErrRemap): an
// extension only adds sectors at the end. The new table is loaded into
// the inactive slot; the device is suspended without flushing (I/O in flight
// waits inside device-mapper, nothing fails) or freezing a filesystem,
// resumed on the new table, and its size checked. The new table is loaded
// read-only when the device is, or when the metadata makes the VG or LV
// read-only, as lvm does. A failure between load and resume drops the
// loaded table and resumes the old one, so the LV is never left suspended.
// An LV with a table pending from another process is left alone
// (ErrSuspended).
func (r *Refresher) Refresh(vgName, lvName string, devices []string) (Result, error) {
	start := time.Now()
	res := Result{VG: vgName, LV: lvName}
	vg, want, err := readTable(vgName, lvName, devices)
	if err != nil {
		return res, err
	}
	res.Devices = vg.DevicePaths()
	uuid, err := vg.DMUUID(lvName)
	if err != nil {
		return res, err
	}
	res.Metadata = time.Since(start)

	id := dm.ByUUID(uuid)
	info, live, err := r.ctl.Table(id)
	if errors.Is(err, dm.ErrNoDevice) {
		return res, fmt.Errorf("%s/%s (dm uuid %s): %w", vgName, lvName, uuid, ErrNotActive)
	}
	if err != nil {
		return res, err
	}
	res.Device = info.BlockDevice()
	res.OldSize = dm.TableSectors(live) * 512
	res.NewSize = dm.TableSectors(want) * 512
	if sameTable(live, want) {
		res.Total = time.Since(start)
		r.log.Debug().Str("vg", vgName).Str("lv", lvName).Uint64("size", res.NewSize).Msg("table up to date")
		return res, nil
	}
	switch {
	case !info.HasLiveTable():
		return res, fmt.Errorf("%s/%s: %s has no live table", vgName, lvName, res.Device)
	case info.Suspended():
		return res, fmt.Errorf("%s/%s: %w", vgName, lvName, ErrSuspended)
	case info.HasInactiveTable():
		// Loading would replace that table, and the other process's resume
		// would then put ours live instead of its own.
		return res, fmt.Errorf("%s/%s: %w: a table loaded by another process waits for its resume", vgName, lvName, ErrSuspended)
	case res.NewSize < res.OldSize:
		return res, fmt.Errorf("%s/%s: metadata size %d bytes, live %d: %w", vgName, lvName, res.NewSize, res.OldSize, ErrShrink)
	case !extends(live, want):
		return res, fmt.Errorf("%s/%s: %w: live table [%s], metadata [%s]", vgName, lvName, ErrRemap,
			oneLine(live), oneLine(want))
	}
	r.log.Debug().Str("vg", vgName).Str("lv", lvName).
		Str("live", oneLine(live)).Str("new", oneLine(want)).Msg("swapping table")

	// As lvm, a read-only VG or LV gets a read-only device; and a device
	// active read-only stays so, since the kernel takes the mode from the table.
	lv, err := vg.LV(lvName)
	if err != nil {
		return res, err
	}
	readOnly := info.ReadOnly() || !slices.Contains(vg.Status, "WRITE") || !lv.HasStatus("WRITE")

	swapStart := time.Now()
	if err := r.swap(id, want, readOnly); err != nil {
		return res, fmt.Errorf("%s/%s: %w", vgName, lvName, err)
	}
	res.Swap = time.Since(swapStart)
	res.Changed = true
	size, err := blockdev.Size(res.Device)
	if err != nil {
		return res, fmt.Errorf("%s/%s: check the new size: %w", vgName, lvName, err)
	}
	if size != res.NewSize {
		return res, fmt.Errorf("%s/%s: %s is %d bytes after the swap, want %d", vgName, lvName, res.Device, size, res.NewSize)
	}
	res.Total = time.Since(start)
	return res, nil
}

// readTable reads the VG's metadata from devices, or from a scan of this
// host when the devices do not (or no longer) hold all of the VG.
func readTable(vgName, lvName string, devices []string) (*lvm.VG, []dm.Target, error) {
	vg, err := lvm.ReadVG(vgName, devices)
	var table []dm.Target
	if err == nil {
		table, err = vg.Table(lvName)
	}
	if devices != nil && (errors.Is(err, lvm.ErrVGNotFound) || errors.Is(err, lvm.ErrPVMissing)) {
		return readTable(vgName, lvName, nil)
	}
	if err != nil {
		return nil, nil, err
	}
	return vg, table, nil
}

func (r *Refresher) swap(id dm.DeviceID, table []dm.Target, readOnly bool) error {
	load := r.ctl.Load
	if readOnly {
		load = r.ctl.LoadReadOnly
	}
	if _, err := load(id, table); err != nil {
		return fmt.Errorf("load the new table: %w", err)
	}
	// As lvm does for a refresh, skip freezing a filesystem: the existing
	// mapping does not change. Unlike lvm, do not wait for I/O in flight.
	if _, err := r.ctl.Suspend(id, dm.NoFlush|dm.SkipLockfs); err != nil {
		return r.rollback(id, fmt.Errorf("suspend: %w", err))
	}
	if _, err := r.ctl.Resume(id); err != nil {
		return r.rollback(id, fmt.Errorf("resume on the new table: %w", err))
	}
	return nil
}

// rollback drops the loaded table and resumes the device on its old one.
func (r *Refresher) rollback(id dm.DeviceID, cause error) error {
	_, clearErr := r.ctl.ClearInactive(id)
	if _, err := r.ctl.Resume(id); err != nil {
		return errors.Join(cause, clearErr, fmt.Errorf("resume on the old table: %w: the LV may be left suspended", err))
	}
	return cause
}

// sameTable compares tables target by target.
func sameTable(a, b []dm.Target) bool {
	return len(a) == len(b) && extends(a, b) && a[len(a)-1].Length == b[len(b)-1].Length
}

// extends tells whether want maps every sector live maps to the same place and
// only adds sectors after them: live's targets come first in want unchanged,
// except that the last one may be longer, as when lvm merges an extension
// contiguous on disk with the LV's last segment. Parameters are compared word
// by word, as the kernel normalises spacing when it prints them.
func extends(live, want []dm.Target) bool {
	if len(live) == 0 || len(want) < len(live) {
		return false
	}
	for i, l := range live {
		w := want[i]
		if l.Start != w.Start || l.Type != w.Type || !slices.Equal(strings.Fields(l.Params), strings.Fields(w.Params)) ||
			l.Length > w.Length || l.Length < w.Length && i != len(live)-1 {
			return false
		}
	}
	return true
}

// oneLine formats a table as dmsetup does, with "; " between targets.
func oneLine(table []dm.Target) string {
	return strings.ReplaceAll(strings.TrimSuffix(lvm.FormatTable(table), "\n"), "\n", "; ")
}
