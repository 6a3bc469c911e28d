// Command lvwatch is the thin-provisioning agent for VM disks on shared LVM storage.
// This file only dispatches subcommands; each lives in its own file with its flags.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/rs/zerolog"
	"golang.org/x/sys/unix"
)

// A command is one subcommand: its name, a one-line summary and its runner.
// run gets the arguments after the subcommand name.
type command struct {
	name, summary string
	run           func(ctx context.Context, args []string) error
}

func commands() []command {
	return []command{
		{"watch", "print write events crossing a threshold on block devices", runWatch},
		{"demo", "show the watcher on a loop device with an embedded default", runDemo},
		{"refresh", "make an LV's device-mapper table match the LVM metadata on disk", runRefresh},
		{"mailbox", "initialise or dump the storage mailbox volumes (inbox, outbox)", runMailbox},
		{"extend", "ask the SPM for a bigger volume through the storage mailbox, as one host", runExtend},
		{"agent", "watch this host's thin LVs and extend each before it fills (the SPM with --spm)", runAgent},
		{"spm", "serve extend requests as the storage domains' SPM: validate, lvextend, reply", runSPM},
		{"status", "show what the agent running here is doing: its LVs, extensions and SPM", runStatus},
		{"resume", "resume the VMs paused for want of space on devices grown by hand", runResume},
		{"doctor", "show (and with --remove, remove) what lvwatch has pinned and attached on this host", runDoctor},
		{"version", "print the version", runVersion},
	}
}

// errUsage marks an error the user fixes by reading the usage; its exit code is 2.
var errUsage = errors.New("usage")

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage()
		return 2
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
		defer stop()
		err := c.run(ctx, args[1:])
		switch {
		case err == nil:
			return 0
		case errors.Is(err, flag.ErrHelp):
			return 0
		case errors.Is(err, errUsage):
			fmt.Fprintf(os.Stderr, "lvwatch %s: %v\n", c.name, err)
			return 2
		default:
			logger.Error().Err(err).Str("command", c.name).Msg("failed")
			return 1
		}
	}
	fmt.Fprintf(os.Stderr, "lvwatch: unknown command %q\n", args[0])
	usage()
	return 2
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: lvwatch COMMAND [flags]\n\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(os.Stderr, "  %-10s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(os.Stderr, "\nRun 'lvwatch COMMAND -h' for a command's flags.")
}

// logger is the process logger: JSON lines on stderr, one event per line,
// so that journald and log shippers keep the fields; on a terminal, the same
// events for a person to read.
// Info by default: debug lines (every mailbox poll, every table loaded) are for --log-level debug.
// Timestamps carry milliseconds: an extension takes tens of them.
var logger = zerolog.New(logOutput()).Level(zerolog.InfoLevel).With().Timestamp().Logger()

func init() { zerolog.TimeFieldFormat = "2006-01-02T15:04:05.000Z07:00" }

func logOutput() io.Writer {
	if _, err := unix.IoctlGetTermios(int(os.Stderr.Fd()), unix.TCGETS); err == nil {
		return zerolog.ConsoleWriter{Out: os.Stderr, TimeFormat: "15:04:05.000"}
	}
	return os.Stderr
}

// newFlagSet returns a flag set for a subcommand with the flags every command shares.
func newFlagSet(name string) *flag.FlagSet {
	fs := flag.NewFlagSet("lvwatch "+name, flag.ContinueOnError)
	fs.Func("log-level", "log level: debug, info (default), warn, error", func(s string) error {
		lvl, err := zerolog.ParseLevel(s)
		if err != nil {
			return err
		}
		logger = logger.Level(lvl)
		return nil
	})
	return fs
}

// parseFlags parses args into fs and wraps a parse error as a usage error.
func parseFlags(fs *flag.FlagSet, args []string) error {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	return nil
}
