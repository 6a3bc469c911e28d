package main

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/cilium/ebpf/link"
	"github.com/lvwatch/lvwatch/internal/watch"
)

// doctorReport is what lvwatch doctor found, and with --remove what it removed.
type doctorReport struct {
	Pins       []pinsReport      `json:"pins"`
	LooseLinks []watch.LooseLink `json:"loose_links"`
}

type pinsReport struct {
	watch.Pins
	Removed bool   `json:"removed,omitempty"`
	Kept    string `json:"kept,omitempty"` // why --remove left it
}

func runDoctor(ctx context.Context, args []string) error {
	fs := newFlagSet("doctor")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: lvwatch doctor [--remove] [--json] [DIR...]\n\n"+
			"Shows what lvwatch has pinned and attached on this host: each pin directory under\n"+
			watch.DefaultPinDir+"* (or the DIRs) with its program, how it is attached, its link,\n"+
			"maps and armings, and the process that holds it; then any link of an lvwatch\n"+
			"program that no pin holds. A directory that no process holds is a leftover whose\n"+
			"program still runs for every bio on the host.")
		fs.PrintDefaults()
	}
	remove := fs.Bool("remove", false, "detach and remove the pin directories that no process holds; without DIRs, all but the agent's "+
		"("+watch.DefaultPinDir+"), whose pins keep the armings and crossings for its next start: name it to remove it")
	asJSON := fs.Bool("json", false, "print the report as JSON")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	dirs, named := fs.Args(), fs.NArg() > 0
	if !named {
		var err error
		if dirs, err = watch.PinDirs(); err != nil {
			return err
		}
	}
	holders, err := watch.FindHolders()
	if err != nil {
		return err
	}
	var report doctorReport
	var pinned []link.ID
	for _, dir := range dirs {
		p, err := watch.InspectPins(dir, holders)
		if err != nil {
			return err
		}
		if p.Link != nil {
			pinned = append(pinned, p.Link.ID)
		}
		r := pinsReport{Pins: p}
		if *remove {
			removeLeftover(&r, named)
		}
		report.Pins = append(report.Pins, r)
	}
	if report.LooseLinks, err = watch.LooseLinks(pinned, holders); err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(report)
	}
	return printDoctor(os.Stdout, report)
}

// removeLeftover removes r's pins unless a process holds them, or, when the
// directories were not named, they are the agent's.
func removeLeftover(r *pinsReport, named bool) {
	switch {
	case r.Locked:
		r.Kept = "a running watcher holds it"
	case !named && r.Dir == watch.DefaultPinDir:
		r.Kept = "the agent's: its next start delivers what they keep; name the directory to remove it"
	default:
		if err := watch.RemovePins(r.Dir); err != nil {
			r.Kept = err.Error()
			return
		}
		r.Removed = true
		logger.Info().Str("dir", r.Dir).Msg("removed the pins, detaching their program")
	}
}

func printDoctor(w io.Writer, report doctorReport) error {
	var b strings.Builder
	if len(report.Pins) == 0 {
		fmt.Fprintf(&b, "no lvwatch pins under %s*\n", watch.DefaultPinDir)
	}
	for _, r := range report.Pins {
		p := r.Pins
		fmt.Fprintf(&b, "%s: %s\n", p.Dir, holdState(p))
		if l := p.Link; l != nil {
			fmt.Fprintf(&b, "  program  %s\n", describeLink(*l))
		} else {
			fmt.Fprintln(&b, "  program  no link pinned: detached, or attached only while its process runs")
		}
		if p.Armings >= 0 {
			fmt.Fprintf(&b, "  armings  %s, %d armed\n", plural(p.Armings, "device"), max(p.Armed, 0))
		}
		var maps []string
		for _, m := range p.Maps {
			maps = append(maps, fmt.Sprintf("%s (%s, id %d)", m.Name, m.Type, m.ID))
		}
		fmt.Fprintf(&b, "  maps     %s\n", cmp.Or(strings.Join(maps, ", "), "none"))
		if len(p.Other) > 0 {
			fmt.Fprintf(&b, "  other    %s\n", strings.Join(p.Other, ", "))
		}
		switch {
		case r.Removed:
			fmt.Fprintln(&b, "  removed: the program is detached")
		case r.Kept != "":
			fmt.Fprintf(&b, "  kept: %s\n", r.Kept)
		}
	}
	if len(report.LooseLinks) > 0 {
		fmt.Fprintln(&b, "links of lvwatch programs that no pin holds:")
		for _, l := range report.LooseLinks {
			fmt.Fprintf(&b, "  %s, %s\n", describeLink(l.PinnedLink), holderList(l.Holders, "held by no process: pinned elsewhere"))
		}
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// holdState says who holds a pin directory, or that it is a leftover.
func holdState(p watch.Pins) string {
	switch {
	case p.Locked:
		return holderList(p.Holders, "held by a running watcher")
	case p.Link != nil:
		return fmt.Sprintf("no process holds it: a leftover whose program still runs for every bio (lvwatch doctor --remove %s)", p.Dir)
	}
	return fmt.Sprintf("no process holds it, no program attached (lvwatch doctor --remove %s)", p.Dir)
}

func holderList(holders []watch.Holder, none string) string {
	if len(holders) == 0 {
		return none
	}
	var who []string
	for _, h := range holders {
		who = append(who, fmt.Sprintf("pid %d (%s)", h.PID, h.Command))
	}
	return "held by " + strings.Join(who, ", ")
}

// describeLink says what a link attaches: the program, as which probe, where.
func describeLink(l watch.PinnedLink) string {
	s := fmt.Sprintf("%s (%s, id %d)", l.Program, l.ProgramType, l.ProgramID)
	if l.Probe != "" {
		s += " as the " + string(l.Probe) + " probe"
	}
	if l.Tracepoint != "" {
		s += " on " + l.Tracepoint
	}
	return s + fmt.Sprintf(", link %d (%s)", l.ID, l.Type)
}
