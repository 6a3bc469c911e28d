package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	iofs "io/fs"
	"os"

	"github.com/lvwatch/lvwatch/internal/mailbox"
)

func runMailbox(ctx context.Context, args []string) error {
	sub := map[string]func(context.Context, []string) error{"init": runMailboxInit, "dump": runMailboxDump}
	if len(args) == 0 || sub[args[0]] == nil {
		fmt.Fprintln(os.Stderr, "usage: lvwatch mailbox init|dump --inbox PATH --outbox PATH [flags]\n\n"+
			"  init   zero the mailboxes and the events block (every pending request is lost)\n"+
			"  dump   print every non-empty slot, decoded, and flag bad checksums")
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help") {
			return flag.ErrHelp
		}
		return fmt.Errorf("%w: want init or dump", errUsage)
	}
	return sub[args[0]](ctx, args[1:])
}

// mailboxFlags adds the flags naming the two volumes.
func mailboxFlags(fs *flag.FlagSet) (inbox, outbox *string) {
	inbox = fs.String("inbox", "", "the inbox volume: hosts write requests there (file or block device)")
	outbox = fs.String("outbox", "", "the outbox volume: the SPM writes replies there (file or block device)")
	return inbox, outbox
}

// forceFlag adds --force, which writes to volumes that carry a known signature.
func forceFlag(fs *flag.FlagSet) *bool {
	return fs.Bool("force", false, "write to the volumes even when they carry an LVM2 label, a partition table or a file system")
}

// withForceHint names the flag that overrides a refusal of a volume's signature.
func withForceHint(err error) error {
	if errors.Is(err, mailbox.ErrSignature) {
		return fmt.Errorf("%w (--force writes there all the same)", err)
	}
	return err
}

func requireVolumes(inbox, outbox string) error {
	if inbox == "" || outbox == "" {
		return fmt.Errorf("%w: --inbox and --outbox are required", errUsage)
	}
	return nil
}

func runMailboxInit(_ context.Context, args []string) error {
	fs := newFlagSet("mailbox init")
	inbox, outbox := mailboxFlags(fs)
	create := fs.Bool("create", false, "create missing files (sized for the 250 mailboxes)")
	force := forceFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := requireVolumes(*inbox, *outbox); err != nil {
		return err
	}
	for _, path := range []string{*inbox, *outbox} {
		v, err := mailbox.OpenVolume(path, mailbox.VolumeOptions{Create: *create, IgnoreSignatures: *force})
		if errors.Is(err, iofs.ErrNotExist) {
			return fmt.Errorf("%w (--create makes missing files)", err)
		}
		if err != nil {
			return withForceHint(err)
		}
		err = v.Init()
		v.Close()
		if err != nil {
			return err
		}
		fmt.Printf("%s: zeroed %d bytes (250 mailboxes)\n", path, mailbox.UsedSize)
	}
	return nil
}

func runMailboxDump(_ context.Context, args []string) error {
	fs := newFlagSet("mailbox dump")
	inbox, outbox := mailboxFlags(fs)
	asJSON := fs.Bool("json", false, "print one JSON document")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := requireVolumes(*inbox, *outbox); err != nil {
		return err
	}
	var data [2][]byte
	for i, path := range []string{*inbox, *outbox} {
		v, err := mailbox.OpenVolumeReadOnly(path)
		if err != nil {
			return err
		}
		data[i], err = v.ReadAll()
		v.Close()
		if err != nil {
			return err
		}
	}
	snap, err := mailbox.Inspect(data[0], data[1])
	if err != nil {
		return err
	}
	if *asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(snap)
	}
	printSnapshot(os.Stdout, snap)
	return nil
}

func printSnapshot(w io.Writer, snap mailbox.Snapshot) {
	event := snap.Event
	if event == "" {
		event = "none"
	}
	fmt.Fprintf(w, "events block: %s\n", event)
	if len(snap.Mailboxes) == 0 {
		fmt.Fprintln(w, "no messages")
	}
	for _, mb := range snap.Mailboxes {
		check := ""
		if mb.ChecksumOK != nil {
			check = fmt.Sprintf("  checksum %#08x ok", mb.Checksum)
			if !*mb.ChecksumOK {
				check = fmt.Sprintf("  checksum %#08x BAD (torn or corrupt: an SPM ignores this mailbox)", mb.Checksum)
			}
		}
		fmt.Fprintf(w, "%-6s host %3d%s\n", mb.Box, mb.HostID, check)
		for _, s := range mb.Slots {
			fmt.Fprintf(w, "  slot %2d  msg %5d  %-7s", s.Slot, s.MessageID, s.Kind)
			if s.Kind == mailbox.KindExtend.String() {
				fmt.Fprintf(w, "  domain %s  volume %s  size %d MiB", s.Domain, s.Volume, s.SizeMiB)
				if mb.Box == "outbox" && s.SizeMiB == 0 && s.Error == "" {
					fmt.Fprint(w, " (failure)")
				}
			}
			if s.Error != "" {
				fmt.Fprintf(w, "  error: %s", s.Error)
			}
			if s.Raw != "" {
				fmt.Fprintf(w, "  raw %s", s.Raw)
			}
			fmt.Fprintln(w)
		}
	}
}
