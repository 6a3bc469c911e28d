// Package uevent reads the kernel's device events (uevents) from a netlink socket,
// so the agent learns when block devices appear, change size or go away without
// polling sysfs.
//
// Only the kernel's own messages are read (multicast group 1), not udev's
// rebroadcasts (group 2): the agent must not depend on udev running, and the
// kernel's message is sent before udev has even seen the device.
package uevent

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNotKernel is returned by Parse for a message in udev's "libudev" format,
// which a kernel uevent reader must not take for the kernel's.
var ErrNotKernel = errors.New("uevent: libudev message, not a kernel uevent")

// Event is one kernel uevent.
type Event struct {
	Action    string // add, remove, change, move, online, offline, bind, unbind
	DevPath   string // the sysfs path below /sys, e.g. /devices/virtual/block/loop0
	Subsystem string // e.g. block
	DevName   string // the node's name below /dev, e.g. loop0 or dm-3; empty if none
	DevType   string // for block: disk or partition
	// Major and Minor are the device number; both 0 when the event carries none.
	Major, Minor uint32
	Seqnum       uint64            // the kernel's uevent counter; 0 if absent
	Env          map[string]string // every KEY=VALUE of the message, these above included
}

// Dev returns the event's device number as a dev_t, the key the watcher's maps use.
func (e Event) Dev() uint64 { return unix.Mkdev(e.Major, e.Minor) }

// Resize reports whether the kernel sent this "change" because the device's size
// changed: from set_capacity_and_notify (a loop LOOP_SET_CAPACITY, a rescanned
// disk), or from device-mapper's resume of a table of another size, which
// kernels since early 2023 (and their stable branches) send once the device is
// resumed, in the resume's own event with its DM_COOKIE.
func (e Event) Resize() bool { return e.Env["RESIZE"] == "1" }

// Parse decodes a kernel uevent datagram: "ACTION@DEVPATH\0KEY=VALUE\0...".
// The header must agree with the ACTION and DEVPATH keys, which the kernel
// always sends; anything else is taken for a forged or corrupt message.
func Parse(msg []byte) (Event, error) {
	if len(msg) == 0 {
		return Event{}, errors.New("uevent: empty message")
	}
	if bytes.HasPrefix(msg, []byte("libudev")) {
		return Event{}, ErrNotKernel
	}
	header, rest, _ := bytes.Cut(msg, []byte{0})
	action, devpath, ok := strings.Cut(string(header), "@")
	if !ok {
		return Event{}, fmt.Errorf("uevent: header %q has no '@'", header)
	}
	if action == "" || devpath == "" {
		return Event{}, fmt.Errorf("uevent: header %q lacks an action or a device path", header)
	}

	env := make(map[string]string)
	for len(rest) > 0 {
		var field []byte
		field, rest, _ = bytes.Cut(rest, []byte{0})
		if len(field) == 0 {
			continue // the trailing NUL
		}
		key, value, ok := strings.Cut(string(field), "=")
		if !ok || key == "" {
			return Event{}, fmt.Errorf("uevent %q: field %q is not KEY=VALUE", header, field)
		}
		env[key] = value
	}

	e := Event{
		Action:    env["ACTION"],
		DevPath:   env["DEVPATH"],
		Subsystem: env["SUBSYSTEM"],
		DevName:   env["DEVNAME"],
		DevType:   env["DEVTYPE"],
		Env:       env,
	}
	if e.Action != action {
		return Event{}, fmt.Errorf("uevent %q: ACTION=%q disagrees with the header", header, e.Action)
	}
	if e.DevPath != devpath {
		return Event{}, fmt.Errorf("uevent %q: DEVPATH=%q disagrees with the header", header, e.DevPath)
	}
	major, hasMajor := env["MAJOR"]
	minor, hasMinor := env["MINOR"]
	if hasMajor != hasMinor {
		return Event{}, fmt.Errorf("uevent %q: MAJOR and MINOR come together, got only one", header)
	}
	if hasMajor {
		ma, err := strconv.ParseUint(major, 10, 32)
		if err != nil {
			return Event{}, fmt.Errorf("uevent %q: MAJOR=%q: %w", header, major, err)
		}
		mi, err := strconv.ParseUint(minor, 10, 32)
		if err != nil {
			return Event{}, fmt.Errorf("uevent %q: MINOR=%q: %w", header, minor, err)
		}
		e.Major, e.Minor = uint32(ma), uint32(mi)
	}
	if s, ok := env["SEQNUM"]; ok {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			return Event{}, fmt.Errorf("uevent %q: SEQNUM=%q: %w", header, s, err)
		}
		e.Seqnum = n
	}
	return e, nil
}
