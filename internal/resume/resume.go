// Package resume continues the VMs that QEMU paused because a write went past
// the end of their disk's device (ENOSPC), once that device has room again.
//
// A VM is reached through its manager: libvirt (oVirt, virt-manager, plain
// libvirt hosts) or the VM's own QMP socket (Proxmox VE, plain qemu). Either way
// lvwatch connects, asks, resumes and disconnects: a QMP monitor serves one client
// at a time, and the host's own tools need it too.
//
// Only a VM paused on an I/O error, with at least one drive that failed for want
// of space, is resumed, and only when every such drive is on a device that now
// has room: a VM paused by an operator, on another error, or still waiting for a
// second drive stays as it is.
package resume

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/blockdev"
	"github.com/lvwatch/lvwatch/internal/size"
	"github.com/lvwatch/lvwatch/internal/watch"
)

// State is what a VM's manager says of it.
type State struct {
	// Status is the manager's word for the run state ("running", "io-error",
	// "paused" for QMP; "running", "paused (I/O error)"... for libvirt).
	Status string
	// IOErrorPause is true when the VM was paused by QEMU on an I/O error (QMP
	// status io-error, libvirt paused with reason I/O error): the only pause
	// lvwatch undoes. Drives are only asked for then.
	IOErrorPause bool
	// Unknown says why lvwatch cannot tell which drives ran out of space, when
	// it cannot: such a VM is left to its operator.
	Unknown string
	Drives  []Drive
}

// Drive is one disk of a VM.
type Drive struct {
	Name string `json:"drive"` // the drive's id (QMP) or target (libvirt: vda)
	Path string `json:"path"`  // the host file or device of its top image
	// Dev is the device number of Path, or the zero Dev when Path is not a block
	// device (a file, a network disk): lvwatch cannot give such a drive room.
	Dev        watch.Dev `json:"-"`
	NoSpace    bool      `json:"-"` // its last write failed for want of space
	OtherError bool      `json:"-"` // its last request failed otherwise (EIO): not lvwatch's to retry
	// Highest is the end of the highest write QEMU made to Path since it opened
	// it (the allocation vdsm reads), or 0 when unknown.
	Highest uint64 `json:"-"`
}

// Machine is one VM, reached for the length of a Source's Visit.
type Machine interface {
	Name() string
	// Named reports whether the user named this VM or its manager (a socket
	// path, a libvirt URI) rather than lvwatch finding it.
	Named() bool
	State(ctx context.Context) (State, error)
	// Resume continues the VM and returns when its manager says it runs again.
	Resume(ctx context.Context) error
}

// Source is a way to the VMs of this host.
type Source interface {
	String() string
	// Visit calls fn for every VM the source reaches; a VM that cannot be reached
	// is reported to fn as a Machine whose State fails.
	Visit(ctx context.Context, fn func(Machine)) error
}

// PauseWatcher is a Source that tells of pauses as they happen.
type PauseWatcher interface {
	Source
	WatchPauses(ctx context.Context, fn func(path string)) error
}

// minRoom is the free space past a drive's highest write that counts as room: a
// qcow2 write that failed at the end allocates one cluster (64 KiB by default)
// and perhaps a table or two; less than this and the VM would pause again at once.
const minRoom = 1 << 20

// Action is what Run did with a VM.
type Action string

const (
	Resumed    Action = "resumed"
	Left       Action = "left"       // not lvwatch's to resume, or not yet
	Unaffected Action = "unaffected" // paused on ENOSPC, on none of the devices
	Failed     Action = "failed"
)

// Outcome is one VM Run looked at, or a source it could not list (VM "").
type Outcome struct {
	Source  string    `json:"source"`
	VM      string    `json:"vm,omitempty"`
	Action  Action    `json:"action"`
	Why     string    `json:"why"`
	Paused  bool      `json:"paused_on_io_error"`
	Full    []Drive   `json:"out_of_space,omitempty"` // its drives that ran out of space
	Waiting []Drive   `json:"waiting_for,omitempty"`  // those of them still without room
	At      time.Time `json:"at,omitzero"`            // for Resumed: when its manager said it runs again
	Named   bool      `json:"-"`                      // the user named the VM or its source
	Err     error     `json:"-"`
}

// Pending reports whether the VM stays paused for want of space lvwatch may yet give.
func (o Outcome) Pending() bool { return o.Action == Left && len(o.Waiting) > 0 }

// Room tells whether a drive that ran out of space has been given room on its
// device (an LV just extended, or named by an operator who grew it).
type Room func(Drive) bool

// Run visits the VMs of every source and resumes those paused on ENOSPC that use
// one of devs and whose every drive that ran out of space has room now. It has
// an Outcome for every VM it reached, and one for a source it could not list.
func Run(ctx context.Context, sources []Source, devs []watch.Dev, room Room, log zerolog.Logger) []Outcome {
	var out []Outcome
	for _, src := range sources {
		err := src.Visit(ctx, func(m Machine) {
			o := visit(ctx, m, devs, room)
			o.Source = src.String()
			LogOutcome(log, o)
			out = append(out, o)
		})
		if err != nil {
			o := Outcome{Source: src.String(), Action: Failed, Why: err.Error(), Named: true, Err: err}
			LogOutcome(log, o)
			out = append(out, o)
		}
	}
	return out
}

func visit(ctx context.Context, m Machine, devs []watch.Dev, room Room) Outcome {
	o := Outcome{VM: m.Name(), Named: m.Named()}
	st, err := m.State(ctx)
	if err != nil {
		o.Action, o.Why, o.Err = Failed, err.Error(), err
		return o
	}
	o.Paused = st.IOErrorPause
	o.Action, o.Why, o.Full, o.Waiting = Decide(st, devs, room, blockdev.Size)
	if o.Action != Resumed {
		return o
	}
	if err := m.Resume(ctx); err != nil {
		o.Action, o.Why, o.Err = Failed, "resume: "+err.Error(), err
		return o
	}
	o.At = time.Now()
	return o
}

// Decide is Run's rule for one VM: Resumed when it is to be resumed, Left with
// the reason otherwise; the drives that ran out of space, and those of them
// still without room. sizeOf reads a device's size.
func Decide(st State, devs []watch.Dev, room Room, sizeOf func(string) (uint64, error)) (_ Action, why string, full, waiting []Drive) {
	if !st.IOErrorPause {
		return Left, "not paused on an I/O error (status " + st.Status + ")", nil, nil
	}
	if !slices.ContainsFunc(st.Drives, func(d Drive) bool { return d.Dev != (watch.Dev{}) && slices.Contains(devs, d.Dev) }) {
		return Unaffected, "uses none of the devices", nil, nil
	}
	if st.Unknown != "" {
		return Left, st.Unknown, nil, nil
	}
	var failed, names, whys []string
	for _, d := range st.Drives {
		switch {
		case d.OtherError:
			failed = append(failed, d.Name)
		case d.NoSpace:
			full = append(full, d)
			names = append(names, d.Name)
			if why := noRoom(d, room, sizeOf); why != "" {
				waiting = append(waiting, d)
				whys = append(whys, fmt.Sprintf("%s on %s (%s)", d.Name, d.Path, why))
			}
		}
	}
	switch {
	case len(failed) > 0:
		return Left, "paused on another I/O error too, on " + strings.Join(failed, ", "), full, nil
	case len(full) == 0:
		return Left, "paused on an I/O error that is not for want of space", nil, nil
	case len(waiting) > 0:
		return Left, "still out of space: " + strings.Join(whys, ", "), full, waiting
	}
	return Resumed, "room again on " + strings.Join(names, ", "), full, nil
}

// noRoom says why a drive that ran out of space has no room yet, or "" if it has.
func noRoom(d Drive, room Room, sizeOf func(string) (uint64, error)) string {
	if d.Dev == (watch.Dev{}) {
		return "not on a block device"
	}
	if !room(d) {
		return "not grown"
	}
	if d.Highest == 0 {
		return ""
	}
	sz, err := sizeOf(d.Path)
	if err != nil {
		return err.Error()
	}
	if sz < d.Highest+minRoom {
		return fmt.Sprintf("%s, its highest write at %s", size.Format(sz), size.Format(d.Highest))
	}
	return ""
}

// LogOutcome logs what Run did with a VM: a resume at info level, a failure (or
// a source that could not list its VMs) at warning level, a VM left paused on
// an I/O error at info level, the rest at debug level.
func LogOutcome(log zerolog.Logger, o Outcome) {
	var ev *zerolog.Event
	var msg string
	switch {
	case o.Action == Resumed:
		ev, msg = log.Info(), "VM resumed"
	case o.Action == Failed && o.VM == "":
		ev, msg = log.Warn().Err(o.Err), "cannot list the VMs"
	case o.Action == Failed:
		ev, msg = log.Warn().Err(o.Err), "VM not reached or not resumed"
	case o.Action == Left && o.Paused:
		ev, msg = log.Info(), "VM paused on an I/O error left as it is"
	default:
		ev, msg = log.Debug(), "VM left as it is"
	}
	ev.Str("source", o.Source).Str("vm", o.VM).Str("action", string(o.Action)).Str("why", o.Why).Msg(msg)
}
