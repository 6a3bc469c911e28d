// Package refresh makes an LV's device-mapper table on this host match the
// LVM metadata on disk. After another host (the SPM) extends an LV, it reads
// the VG's metadata straight from the PVs, builds the table lvm would load and
// swaps it in with three ioctls: what `lvchange --refresh` does, in a few
// milliseconds instead of hundreds.
package refresh

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/blockdev"
	"github.com/lvwatch/lvwatch/internal/dm"
	"github.com/lvwatch/lvwatch/internal/lvm"
	"github.com/lvwatch/lvwatch/internal/lvm/vglock"
	"github.com/lvwatch/lvwatch/internal/refresh/intent"
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

// Mapper is what a Refresher asks of device-mapper and the block layer.
// Kernel is the real one; tests inject faults through others.
type Mapper interface {
	Table(dm.DeviceID) (dm.Info, []dm.Target, error)
	Load(dm.DeviceID, []dm.Target) (dm.Info, error)
	LoadReadOnly(dm.DeviceID, []dm.Target) (dm.Info, error)
	ClearInactive(dm.DeviceID) (dm.Info, error)
	Suspend(context.Context, dm.DeviceID, dm.SuspendFlags) (dm.Info, error)
	Resume(dm.DeviceID) (dm.Info, error)
	// BlockSize is the size the kernel gives a block device: what the VM sees.
	BlockSize(device string) (uint64, error)
}

// Kernel is the Mapper of this host: device-mapper through ctl.
func Kernel(ctl *dm.Control) Mapper { return kernel{ctl} }

type kernel struct{ *dm.Control }

func (kernel) BlockSize(device string) (uint64, error) { return blockdev.Size(device) }

// Options configure a Refresher; zero fields take the defaults.
type Options struct {
	Log zerolog.Logger
	// Scan lets a refresh read every block device lvm would scan on this
	// host (honouring lvm's devices file or filters) when the devices it is
	// given do not hold the whole VG. Off, it reads only those.
	Scan bool
	// ReadTimeout bounds the wait for lvm's VG lock and each metadata read.
	ReadTimeout time.Duration
	// SwapTimeout bounds the swap: load, then a suspend that waits for the
	// LV's I/O in flight; past it the suspend gives up and the old table
	// stays live.
	SwapTimeout time.Duration
	// StateDir keeps the records of swaps in progress.
	StateDir string
}

// Defaults of Options.
const (
	DefaultReadTimeout = 10 * time.Second
	DefaultSwapTimeout = 5 * time.Second
	DefaultStateDir    = "/run/lvwatch/refresh"
)

// Refresher refreshes LVs. It is meant to live as long as its process: it
// keeps each VG's metadata and rereads it only after a commit. It is safe
// for concurrent use; refreshes of one LV take turns.
type Refresher struct {
	m       Mapper
	opts    Options
	log     zerolog.Logger
	lvm     *lvm.HostConfig
	cache   *lvm.Cache
	intents *intent.Dir
}

// New returns a Refresher, after finishing the swaps that processes which
// died mid-way left behind (see Refresh): each such LV is resumed on its
// live table. What it cannot finish it logs and leaves for the next start.
func New(m Mapper, opts Options) (*Refresher, error) {
	if opts.ReadTimeout <= 0 {
		opts.ReadTimeout = DefaultReadTimeout
	}
	if opts.SwapTimeout <= 0 {
		opts.SwapTimeout = DefaultSwapTimeout
	}
	if opts.StateDir == "" {
		opts.StateDir = DefaultStateDir
	}
	cfg, err := lvm.LoadHostConfig()
	if err != nil {
		return nil, err
	}
	intents, err := intent.Open(opts.StateDir)
	if err != nil {
		return nil, err
	}
	r := &Refresher{m: m, opts: opts, log: opts.Log, lvm: cfg, cache: lvm.NewCache(), intents: intents}
	orphans, err := intents.Orphans()
	if err != nil {
		r.log.Error().Err(err).Msg("unreadable records of interrupted swaps")
	}
	for _, rec := range orphans {
		if err := r.finish(rec); err != nil {
			r.log.Error().Err(err).Str("vg", rec.VG).Str("lv", rec.LV).Int("pid", rec.PID).
				Msg("cannot finish a swap a dead process left: the LV may stay suspended")
		}
	}
	return r, nil
}

// finish puts an LV whose swap a dead process left at any step back on its
// live table, running, and drops the record.
func (r *Refresher) finish(rec intent.Record) error {
	ctx, cancel := context.WithTimeout(context.Background(), r.opts.ReadTimeout)
	defer cancel()
	lock, err := vglock.Exclusive(ctx, r.lvm.LockingDir, rec.VG)
	if err != nil {
		return err
	}
	defer lock.Unlock()
	id := dm.ByUUID(rec.UUID)
	info, _, err := r.m.Table(id)
	switch {
	case errors.Is(err, dm.ErrNoDevice): // deactivated since
	case err != nil:
		return err
	case info.Suspended() || info.HasInactiveTable():
		if err := r.restore(id); err != nil {
			return fmt.Errorf("%s/%s: %w", rec.VG, rec.LV, err)
		}
		r.log.Info().Str("vg", rec.VG).Str("lv", rec.LV).Int("pid", rec.PID).Time("since", rec.Time).
			Bool("was_suspended", info.Suspended()).Msg("resumed an LV whose swap a dead process left unfinished")
	}
	return r.intents.Done(rec.UUID)
}

// Refresh makes the live table of LV lvName of VG vgName match the VG's
// metadata on disk. devices are the VG's PVs (Result.Devices of an earlier
// refresh), or nil for those the last refresh of the VG used; when they do
// not hold the whole VG, Refresh scans if Options.Scan allows, else fails.
//
// It holds lvm's own lock of the VG exclusive from the read to the resume
// (a few milliseconds), so that no lvm command on this host changes the VG
// or swaps a table of its LVs meanwhile: lvchange --refresh, for one, takes
// the lock only shared. It also makes one lvwatch process at a time swap in
// a VG, so their records of swaps under way never overwrite each other. The
// VG's metadata is read once and then revalidated by its metadata area's
// header; warnings about it (stale or corrupt copies, PVs missing or
// duplicate) are logged when it is read.
//
// A table equal to the metadata's is left alone. One that shrinks the LV or
// moves sectors it already maps is refused (ErrShrink, ErrRemap): an
// extension only adds sectors at the end. The new table is loaded into the
// inactive slot; the device is suspended without flushing (I/O a target
// holds queued stays queued) or freezing a filesystem, which still waits for
// the I/O in flight, for at most Options.SwapTimeout; then it is resumed on
// the new table and its size checked. The new table is loaded read-only
// when the device is, or when the metadata makes the VG or LV read-only, as
// lvm does. A failure between load and resume drops the loaded table and
// resumes the old one, so the LV is never left suspended; and the swap is
// recorded under Options.StateDir before it starts, so that if this process
// dies half-way, the next New resumes the LV. An LV with a table pending
// from another process is left alone (ErrSuspended).
func (r *Refresher) Refresh(ctx context.Context, vgName, lvName string, devices []string) (Result, error) {
	start := time.Now()
	res := Result{VG: vgName, LV: lvName}
	readCtx, cancel := context.WithTimeout(ctx, r.opts.ReadTimeout)
	defer cancel()
	lock, err := vglock.Exclusive(readCtx, r.lvm.LockingDir, vgName)
	if err != nil {
		return res, err
	}
	defer lock.Unlock()
	vg, want, err := r.readTable(readCtx, vgName, lvName, devices)
	if err != nil {
		return res, err
	}
	res.Devices = vg.DevicePaths()
	uuid, err := vg.DMUUID(lvName)
	if err != nil {
		return res, err
	}
	res.Metadata = time.Since(start)

	// Refreshes of one LV from several goroutines need no lock of their own: the
	// VG lock, a flock on a file each of them opens, already orders them.
	id := dm.ByUUID(uuid)
	info, live, err := r.m.Table(id)
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
	if err := r.swap(ctx, id, uuid, vgName, lvName, want, readOnly); err != nil {
		return res, fmt.Errorf("%s/%s: %w", vgName, lvName, err)
	}
	res.Swap = time.Since(swapStart)
	res.Changed = true
	size, err := r.m.BlockSize(res.Device)
	if err != nil {
		return res, fmt.Errorf("%s/%s: check the new size: %w", vgName, lvName, err)
	}
	if size != res.NewSize {
		return res, fmt.Errorf("%s/%s: %s is %d bytes after the swap, want %d", vgName, lvName, res.Device, size, res.NewSize)
	}
	res.Total = time.Since(start)
	return res, nil
}

// readTable reads the VG's metadata from devices, or, if allowed, from a
// scan of this host when the devices do not (or no longer) hold all of it.
func (r *Refresher) readTable(ctx context.Context, vgName, lvName string, devices []string) (*lvm.VG, []dm.Target, error) {
	vg, cached, err := r.cache.ReadVG(ctx, vgName, devices)
	r.logWarnings(vg, cached)
	var table []dm.Target
	if err == nil {
		table, err = vg.Table(lvName)
	}
	if r.opts.Scan && (errors.Is(err, lvm.ErrVGNotFound) || errors.Is(err, lvm.ErrPVMissing)) {
		if vg, err = lvm.ScanVG(ctx, vgName, r.lvm); err == nil {
			r.cache.Put(vg, vg.DevicePaths())
			r.logWarnings(vg, false)
			table, err = vg.Table(lvName)
		}
	}
	if err != nil {
		return nil, nil, err
	}
	return vg, table, nil
}

// logWarnings logs what a fresh read of the VG found wrong: an operator
// fixes stale or corrupt copies and missing or duplicate PVs.
func (r *Refresher) logWarnings(vg *lvm.VG, cached bool) {
	if vg == nil || cached {
		return
	}
	for _, w := range vg.Warnings {
		r.log.Info().Str("vg", vg.Name).Uint64("seqno", vg.Seqno).Str("warning", w).Msg("LVM metadata warning")
	}
}

// swap loads the table, suspends the device and resumes it on the new
// table, recording the swap until the device runs again.
func (r *Refresher) swap(ctx context.Context, id dm.DeviceID, uuid, vg, lv string, table []dm.Target, readOnly bool) error {
	ctx, cancel := context.WithTimeout(ctx, r.opts.SwapTimeout)
	defer cancel()
	if err := r.intents.Begin(uuid, vg, lv); err != nil {
		return err
	}
	load := r.m.Load
	if readOnly {
		load = r.m.LoadReadOnly
	}
	if _, err := load(id, table); err != nil {
		return r.rollback(id, uuid, fmt.Errorf("load the new table: %w", err))
	}
	// As lvm does for a refresh, skip freezing a filesystem: the existing
	// mapping does not change.
	if _, err := r.m.Suspend(ctx, id, dm.NoFlush|dm.SkipLockfs); err != nil {
		return r.rollback(id, uuid, fmt.Errorf("suspend: %w", err))
	}
	if _, err := r.m.Resume(id); err != nil {
		return r.rollback(id, uuid, fmt.Errorf("resume on the new table: %w", err))
	}
	r.done(uuid)
	return nil
}

// rollback restores the device after a failed swap; if that fails too, the
// record stays for the next start to finish.
func (r *Refresher) rollback(id dm.DeviceID, uuid string, cause error) error {
	if err := r.restore(id); err != nil {
		return errors.Join(cause, err, errors.New("the LV may be left suspended until a refresher starts again"))
	}
	r.done(uuid)
	return cause
}

// done drops the record of a swap over. Should that fail, the next start
// finds the device running and drops it then.
func (r *Refresher) done(uuid string) {
	if err := r.intents.Done(uuid); err != nil {
		r.log.Info().Err(err).Msg("cannot drop the record of a finished swap")
	}
}

// restore drops a loaded table not yet live and resumes the device on its
// live one. Both are no-ops on a device with neither.
func (r *Refresher) restore(id dm.DeviceID) error {
	_, clearErr := r.m.ClearInactive(id)
	if _, err := r.m.Resume(id); err != nil {
		return errors.Join(clearErr, fmt.Errorf("resume on the old table: %w", err))
	}
	return nil
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
