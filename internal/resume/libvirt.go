package resume

import (
	"cmp"
	"context"
	"encoding/xml"
	"errors"
	"fmt"
	"net/url"
	"os"

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

// Visit connects to libvirt once for all its running VMs.
func (l Libvirt) Visit(ctx context.Context, fn func(Machine)) error {
	uri := cmp.Or(l.URI, localLibvirt())
	if uri == "" {
		return nil
	}
	u, err := url.Parse(uri)
	if err != nil {
		return fmt.Errorf("libvirt URI %q: %w", uri, err)
	}
	conn, err := libvirt.ConnectToURI(u)
	if err != nil {
		return fmt.Errorf("libvirt %s: %w", uri, err)
	}
	defer conn.Disconnect()
	doms, _, err := conn.ConnectListAllDomains(1, libvirt.ConnectListDomainsActive)
	if err != nil {
		return fmt.Errorf("libvirt %s: list the domains: %w", uri, err)
	}
	for _, d := range doms {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		fn(&libvirtMachine{conn: conn, dom: d})
	}
	return nil
}

type libvirtMachine struct {
	conn *libvirt.Libvirt
	dom  libvirt.Domain
}

func (m *libvirtMachine) Name() string { return m.dom.Name }

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
	desc, err := m.conn.DomainGetXMLDesc(m.dom, 0)
	if err != nil {
		return State{}, fmt.Errorf("domain XML: %w", err)
	}
	var x domainXML
	if err := xml.Unmarshal([]byte(desc), &x); err != nil {
		return State{}, fmt.Errorf("domain XML: %w", err)
	}
	full, err := m.noSpaceDisks(st.IOErrorPause)
	if err != nil {
		return State{}, err
	}
	for _, disk := range x.Disks {
		d := Drive{Name: disk.Target.Dev, Path: disk.Source.Dev, NoSpace: full[disk.Target.Dev]}
		if disk.Type != "block" {
			d.Path = disk.Source.File // a file, or a network disk with neither
		}
		if d.Path == "" {
			st.Drives = append(st.Drives, d)
			continue
		}
		d.Dev, _ = watch.DevOf(d.Path) // a file stays zero
		if alloc, _, _, err := m.conn.DomainGetBlockInfo(m.dom, d.Name, 0); err == nil {
			d.Highest = alloc // a running VM's qcow2 on a device: QEMU's highest write
		}
		st.Drives = append(st.Drives, d)
	}
	return st, nil
}

// errManyDiskErrors: go-libvirt's DomainDiskError cannot carry its error code
// (the field is unexported, and the decoder skips it without reading its
// bytes), so only a one-entry answer decodes, and it decodes with the code in
// place of the count. A VM with several disks in error is left to its operator.
var errManyDiskErrors = errors.New("more than one disk in error: lvwatch cannot tell through libvirt which ran out of space")

// noSpaceDisks are the disks whose last error is ENOSPC (virsh domblkerror).
func (m *libvirtMachine) noSpaceDisks(paused bool) (map[string]bool, error) {
	if !paused {
		return nil, nil
	}
	_, n, err := m.conn.DomainGetDiskErrors(m.dom, 0, 0) // the count alone decodes right
	if err != nil || n == 0 {
		return nil, err
	}
	if n > 1 {
		return nil, errManyDiskErrors
	}
	errs, code, err := m.conn.DomainGetDiskErrors(m.dom, 1, 0)
	if err != nil || len(errs) != 1 {
		return nil, err
	}
	return map[string]bool{errs[0].Disk: libvirt.DomainDiskErrorCode(code) == libvirt.DomainDiskErrorNoSpace}, nil
}

func (m *libvirtMachine) Resume(ctx context.Context) error {
	return m.conn.DomainResume(m.dom)
}

// WatchPauses calls fn with the host path of each disk that a write failed on
// for want of space, as libvirt tells of it (its I/O error event, reason
// "enospc"), until ctx ends or the connection breaks (the error says why). With
// no libvirt on this host it returns ErrNoManager.
func (l Libvirt) WatchPauses(ctx context.Context, fn func(path string)) error {
	uri := cmp.Or(l.URI, localLibvirt())
	if uri == "" {
		return ErrNoManager
	}
	u, err := url.Parse(uri)
	if err != nil {
		return fmt.Errorf("libvirt URI %q: %w", uri, err)
	}
	conn, err := libvirt.ConnectToURI(u)
	if err != nil {
		return fmt.Errorf("libvirt %s: %w", uri, err)
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
