package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/lvwatch/lvwatch/internal/agent"
	"github.com/lvwatch/lvwatch/internal/size"
	"github.com/lvwatch/lvwatch/internal/spm"
	"github.com/lvwatch/lvwatch/internal/statusd"
)

func runStatus(ctx context.Context, args []string) error {
	fs := newFlagSet("status")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: lvwatch status [--socket PATH] [--json]\n\n"+
			"Shows what the agent running on this host is doing: each watched LV (state, size,\n"+
			"threshold, highest write, extensions and the last one's phases) and, when the SPM\n"+
			"runs here, its domains' counters and the requests waiting for space.")
		fs.PrintDefaults()
	}
	socket := fs.String("socket", statusd.DefaultSocket, "the agent's status socket")
	asJSON := fs.Bool("json", false, "print the agent's JSON as received")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 0 {
		return fmt.Errorf("%w: no arguments expected, got %q", errUsage, fs.Args())
	}
	var raw json.RawMessage
	if err := statusd.Fetch(ctx, *socket, &raw); err != nil {
		return err
	}
	if *asJSON {
		_, err := os.Stdout.Write(append(raw, '\n'))
		return err
	}
	var st agent.Status
	if err := json.Unmarshal(raw, &st); err != nil {
		return fmt.Errorf("the status from %s: %w", *socket, err)
	}
	return printStatus(os.Stdout, st)
}

// printStatus renders st as tables: the watched LVs, then the SPM's domains.
// VG and LV names are cut to their first 8 characters (UUIDs: enough to tell
// them apart); --json has them whole.
func printStatus(w io.Writer, st agent.Status) error {
	var buf bytes.Buffer
	tw := tabwriter.NewWriter(&buf, 0, 8, 2, ' ', 0)
	row := func(cells ...string) { fmt.Fprintln(tw, strings.Join(cells, "\t")) }

	fmt.Fprintf(tw, "host %d: %s watched\n", st.HostID, plural(len(st.Volumes), "LV"))
	if len(st.Volumes) > 0 {
		withErr := false
		for _, v := range st.Volumes {
			withErr = withErr || v.Error != ""
		}
		head := []string{"VG", "LV", "STATE", "SIZE", "THRESHOLD", "HIGHEST", "MAX", "EXT", "LAST ms", "DETECT", "REQUEST", "REFRESH", "REARM"}
		if withErr {
			head = append(head, "ERROR")
		}
		row(head...)
		for _, v := range st.Volumes {
			cells := []string{shortName(v.VG), shortName(v.LV), v.State, size.Format(v.Size), size.Format(v.Threshold),
				size.Format(v.High), size.Format(v.MaxSize), strconv.FormatUint(v.Extensions, 10)}
			if p := v.Last; p != nil {
				cells = append(cells, millis(p.Total), millis(p.Detect), millis(p.Request), millis(p.Refresh), millis(p.Rearm))
			} else {
				cells = append(cells, "-", "-", "-", "-", "-")
			}
			if withErr {
				cells = append(cells, v.Error) // the padding after an empty one is trimmed below
			}
			row(cells...)
		}
	}
	if len(st.PausedVMs) > 0 {
		fmt.Fprintf(tw, "\n%s paused for want of space:\n", plural(len(st.PausedVMs), "VM"))
		row("VM", "WAITS FOR", "WHY")
		for _, o := range st.PausedVMs {
			var drives []string
			for _, d := range o.Waiting {
				drives = append(drives, d.Name+" on "+d.Path)
			}
			row(o.VM, strings.Join(drives, ", "), o.Why)
		}
	}
	if st.SPM != nil {
		printSPM(tw, row, *st.SPM)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for line := range strings.Lines(buf.String()) {
		if _, err := io.WriteString(w, strings.TrimRight(line, " \n")+"\n"); err != nil {
			return err
		}
	}
	return nil
}

// printSPM renders the co-located SPM's domains.
func printSPM(tw io.Writer, row func(...string), s spm.Status) {
	fmt.Fprintf(tw, "\nSPM running here, for %s\n", plural(len(s.Domains), "domain"))
	for _, d := range s.Domains {
		c := d.Counters
		fmt.Fprintf(tw, "domain %s: free %s (reserve %s), seqno %d\n", d.VG, size.Format(d.FreeBytes), size.Format(d.ReserveBytes), d.Seqno)
		fmt.Fprintf(tw, "  requests %d: extended %d, already large %d, refused %d, failed %d, withdrawn %d; waited for space %d; lvm commands %d\n",
			c.Requests, c.Extended, c.AlreadyLarge, c.Refused, c.Failed, c.Withdrawn, c.WaitedForSpace, c.LVMCommands)
		if len(d.WaitingOnSpace) == 0 {
			continue
		}
		fmt.Fprintf(tw, "  %s waiting for space:\n", plural(len(d.WaitingOnSpace), "request"))
		row("  HOST", "VOLUME", "SIZE", "NEEDS", "SINCE")
		for _, r := range d.WaitingOnSpace {
			row("  "+strconv.Itoa(r.Host), shortName(r.Volume), size.Format(r.SizeMiB<<20), size.Format(r.NeedBytes), r.Since.Local().Format(time.RFC3339))
		}
	}
	if s.UnknownDomain > 0 {
		fmt.Fprintf(tw, "requests for a domain this SPM does not serve: %d\n", s.UnknownDomain)
	}
}

// plural is "1 LV", "2 LVs".
func plural(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// shortName is a VG or LV name cut to its first 8 characters.
func shortName(s string) string {
	if r := []rune(s); len(r) > 8 {
		return string(r[:8])
	}
	return s
}

// millis is d in milliseconds, two decimals.
func millis(d time.Duration) string {
	return strconv.FormatFloat(float64(d)/float64(time.Millisecond), 'f', 2, 64)
}
