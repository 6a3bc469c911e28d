package resume

import (
	"cmp"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"net/url"
	"os"
	"time"

	"github.com/digitalocean/go-libvirt"

	"github.com/lvwatch/lvwatch/internal/watch"
)

// The local libvirt's sockets: the monolithic daemon's, then the modular QEMU
// daemon's.
var libvirtSockets = []string{"/run/libvirt/libvirt-sock", "/run/libvirt/virtqemud-sock"}

// localLibvirt is the URI of this host's libvirt, or "" when none runs here.
func localLibvirt() string {
	for _, s := range libvirtSockets {
		if _, err := os.Stat(s); err == nil {
			return "qemu:///system?socket=" + url.QueryEscape(s)
		}
	}
	return ""
}

// Libvirt reaches the VMs that libvirt runs. libvirt owns their monitors: lvwatch
// asks libvirt, never the QMP socket under it.
type Libvirt struct {
	// URI is libvirt's, e.g. qemu:///system; "" is this host's libvirt when one
	// runs (looked for at each visit), and no VM when none does.
	URI string
}

func (l Libvirt) String() string { return "libvirt " + cmp.Or(l.URI, "(this host's)") }

// libvirtTimeout bounds one visit of libvirt's VMs: go-libvirt's calls take no
// context, so the connection is closed under a call that libvirtd does not
// answer (a domain job held by a backup, a hung daemon).
const libvirtTimeout = 30 * time.Second

// Visit connects to libvirt once for all its running VMs.
func (l Libvirt) Visit(ctx context.Context, fn func(Machine)) error {
	conn, uri, err := l.dial()
	if err != nil || conn == nil {
		return err
	}
	defer conn.Disconnect()
	ctx, cancel := context.WithTimeout(ctx, libvirtTimeout)
	defer cancel()
	defer context.AfterFunc(ctx, func() { conn.Disconnect() })()
	doms, _, err := conn.ConnectListAllDomains(1, libvirt.ConnectListDomainsActive)
	if err != nil {
		return fmt.Errorf("libvirt %s: list the domains: %w", uri, err)
	}
	for _, d := range doms {
		if ctx.Err() != nil {
			return fmt.Errorf("libvirt %s: %w", uri, ctx.Err())
		}
		fn(&libvirtMachine{conn: conn, dom: d, named: l.URI != ""})
	}
	return nil
}

// dial connects to libvirt: nil and no error when the source is this host's
// libvirt and none runs.
func (l Libvirt) dial() (*libvirt.Libvirt, string, error) {
	uri := cmp.Or(l.URI, localLibvirt())
	if uri == "" {
		return nil, "", nil
	}
	u, err := url.Parse(uri)
	if err != nil {
		return nil, uri, fmt.Errorf("libvirt URI %q: %w", uri, err)
	}
	conn, err := libvirt.ConnectToURI(u)
	if err != nil {
		return nil, uri, fmt.Errorf("libvirt %s: %w", uri, err)
	}
	return conn, uri, nil
}

type libvirtMachine struct {
	conn  *libvirt.Libvirt
	dom   libvirt.Domain
	named bool
}

func (m *libvirtMachine) Name() string { return m.dom.Name }
func (m *libvirtMachine) Named() bool  { return m.named }

// domainXML is the part of a domain's XML that says where its disks are.
type domainXML struct {
	Disks []struct {
		Type   string `xml:"type,attr"`
		Source struct {
			Dev  string `xml:"dev,attr"`
			File string `xml:"file,attr"`
		} `xml:"source"`
		Target struct {
			Dev string `xml:"dev,attr"`
		} `xml:"target"`
	} `xml:"devices>disk"`
}

func (m *libvirtMachine) State(ctx context.Context) (State, error) {
	state, reason, err := m.conn.DomainGetState(m.dom, 0)
	if err != nil {
		return State{}, fmt.Errorf("state: %w", err)
	}
	st := State{Status: libvirtStatus(libvirt.DomainState(state), reason)}
	st.IOErrorPause = libvirt.DomainState(state) == libvirt.DomainPaused && libvirt.DomainPausedReason(reason) == libvirt.DomainPausedIoerror
	if !st.IOErrorPause {
		return st, nil // the one question a running VM costs
	}
	desc, err := m.conn.DomainGetXMLDesc(m.dom, 0)
	if err != nil {
		return State{}, fmt.Errorf("domain XML: %w", err)
	}
	var x domainXML
	if err := xml.Unmarshal([]byte(desc), &x); err != nil {
		return State{}, fmt.Errorf("domain XML: %w", err)
	}
	disk, code, err := m.diskError()
	switch {
	case errors.Is(err, errManyDiskErrors):
		st.Unknown = err.Error()
	case err != nil:
		return State{}, err
	}
	for _, xd := range x.Disks {
		d := Drive{Name: xd.Target.Dev, Path: xd.Source.Dev}
		if d.Name == disk {
			d.NoSpace, d.OtherError = code == libvirt.DomainDiskErrorNoSpace, code != libvirt.DomainDiskErrorNoSpace
		}
		if xd.Type != "block" {
			d.Path = xd.Source.File // a file, or a network disk with neither
		}
		if d.Path == "" {
			st.Drives = append(st.Drives, d)
			continue
		}
		d.Dev, _ = watch.DevOf(d.Path) // a file stays zero
		if !d.NoSpace {
			st.Drives = append(st.Drives, d)
			continue
		}
		// A qcow2 on a device: QEMU's highest write, or the device's size
		// (physical) when libvirt does not know it.
		if alloc, _, physical, err := m.conn.DomainGetBlockInfo(m.dom, d.Name, 0); err == nil && alloc != physical {
			d.Highest = alloc
		}
		st.Drives = append(st.Drives, d)
	}
	return st, nil
}

// errManyDiskErrors: go-libvirt's DomainDiskError cannot carry its error code
// (the field is unexported, and the decoder skips it without reading its
// bytes), so only a one-entry answer decodes, and it decodes with the code in
// place of the count. A VM with several disks in error is left to its operator.
var errManyDiskErrors = errors.New("more than one disk in error: which ran out of space cannot be told through libvirt here; resume it by hand once they have room")

// diskError is the one disk in error and its error (virsh domblkerror), or ""
// when none is.
func (m *libvirtMachine) diskError() (string, libvirt.DomainDiskErrorCode, error) {
	_, n, err := m.conn.DomainGetDiskErrors(m.dom, 0, 0) // the count alone decodes right
	switch {
	case err != nil:
		return "", 0, fmt.Errorf("disk errors: %w", err)
	case n == 0:
		return "", 0, nil
	case n > 1:
		return "", 0, errManyDiskErrors
	}
	errs, code, err := m.conn.DomainGetDiskErrors(m.dom, 1, 0) // code in the count's place: see errManyDiskErrors
	if err != nil {
		return "", 0, fmt.Errorf("disk errors: %w", err)
	}
	if len(errs) != 1 {
		return "", 0, nil // cleared meanwhile
	}
	return errs[0].Disk, libvirt.DomainDiskErrorCode(code), nil
}

func (m *libvirtMachine) Resume(ctx context.Context) error {
	return m.conn.DomainResume(m.dom)
}

// WatchPauses calls fn with the host path of each disk that a write failed on
// for want of space, as libvirt tells of it (its I/O error event, reason
// "enospc"), until ctx ends or the connection breaks (the error says why). With
// no libvirt on this host it returns ErrNoManager.
func (l Libvirt) WatchPauses(ctx context.Context, fn func(path string)) error {
	conn, uri, err := l.dial()
	if err != nil {
		return err
	}
	if conn == nil {
		return ErrNoManager
	}
	defer conn.Disconnect()
	events, err := conn.SubscribeEvents(ctx, libvirt.DomainEventIDIoErrorReason, libvirt.OptDomain{})
	if err != nil {
		return fmt.Errorf("libvirt %s: subscribe to I/O error events: %w", uri, err)
	}
	for ev := range events {
		if e, ok := ev.(*libvirt.DomainEventCallbackIOErrorReasonMsg); ok && e.Msg.Reason == "enospc" {
			fn(e.Msg.SrcPath)
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("libvirt %s: the event stream ended", uri)
}

// ErrNoManager: the VM manager a watch was asked of does not run on this host.
var ErrNoManager = errors.New("not running on this host")

// libvirtStatus is virsh's word for a state and its reason.
func libvirtStatus(state libvirt.DomainState, reason int32) string {
	switch state {
	case libvirt.DomainRunning:
		return "running"
	case libvirt.DomainPaused:
		if libvirt.DomainPausedReason(reason) == libvirt.DomainPausedIoerror {
			return "paused (I/O error)"
		}
		return fmt.Sprintf("paused (reason %d)", reason)
	}
	return fmt.Sprintf("state %d", state)
}
