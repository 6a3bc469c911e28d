package main

import (
	"cmp"
	"context"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/config"
	"github.com/lvwatch/lvwatch/internal/resume"
	"github.com/lvwatch/lvwatch/internal/watch"
)

// stringList is a flag that may be given more than once.
type stringList []string

func (l *stringList) String() string     { return fmt.Sprint(*l) }
func (l *stringList) Set(s string) error { *l = append(*l, s); return nil }

func runResume(ctx context.Context, args []string) error {
	fs := newFlagSet("resume")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: lvwatch resume [--qmp SOCKET]... [--libvirt URI] DEVICE...\n\n"+
			"Resumes the VMs that QEMU paused for want of space on DEVICE (an LV grown by hand:\n"+
			"/dev/VG/LV, /dev/mapper/..., /dev/dm-N) once every drive of theirs that ran out of\n"+
			"space is on one of the DEVICEs, with room past its highest write. Every other VM is\n"+
			"left as it is: paused by someone, on another error, or not using the devices.\n"+
			"Prints one line per VM; exits 1 if a VM or manager named could not be reached.\n"+
			"The VMs are asked through their QMP sockets (default "+resume.DefaultQMP+") and\n"+
			"libvirt (default: this host's, when it runs).")
		fs.PrintDefaults()
	}
	var sockets stringList
	fs.Var(&sockets, "qmp", "a VM's QMP socket, or a glob of them (repeatable)")
	libvirtURI := fs.String("libvirt", "", "libvirt's URI (default: this host's when it runs; none: no libvirt)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		return fmt.Errorf("%w: name at least one DEVICE", errUsage)
	}
	var devs []watch.Dev
	for _, path := range fs.Args() {
		dev, err := watch.DevOf(path)
		if err != nil {
			return err
		}
		devs = append(devs, dev)
	}
	var patterns *[]string // the default
	if sockets != nil {
		patterns = (*[]string)(&sockets)
	}
	sources := config.VMSources(patterns, nil, *libvirtURI) // an agent may hold the monitors of its own
	grown := func(d resume.Drive) bool { return slices.Contains(devs, d.Dev) }
	log := zerolog.Nop() // the lines below say it all, unless asked for more
	if logger.GetLevel() <= zerolog.DebugLevel {
		log = logger
	}
	outcomes := resume.Run(ctx, sources, devs, grown, log)
	return printOutcomes(os.Stdout, outcomes)
}

// printOutcomes prints one line per VM (or source that could not list its
// VMs) and fails when one that was named could not be reached or resumed.
func printOutcomes(w io.Writer, outcomes []resume.Outcome) error {
	failed := 0
	for _, o := range outcomes {
		fmt.Fprintf(w, "%-10s %s: %s\n", o.Action, cmp.Or(o.VM, o.Source), o.Why)
		if o.Action == resume.Failed && o.Named {
			failed++
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d VM(s) or VM managers named could not be reached or resumed", failed)
	}
	return nil
}
