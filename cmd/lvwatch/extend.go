package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lvwatch/lvwatch/internal/mailbox"
)

func runExtend(ctx context.Context, args []string) error {
	fs := newFlagSet("extend")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: lvwatch extend --inbox PATH --outbox PATH --host-id N --domain UUID --volume UUID --size-mib M\n\n"+
			"Sends one extend request through the storage mailbox as host N, waits for the SPM's reply\n"+
			"and prints it; exits 0 when the SPM granted it. Host N's mailbox is cleared first, so it\n"+
			"refuses one holding the requests of another writer (vdsm, a running agent, another\n"+
			"machine) unless --take-over.")
		fs.PrintDefaults()
	}
	inbox, outbox := mailboxFlags(fs)
	hostID := fs.Int("host-id", 0, "this host's id in the pool (1..249)")
	domain := fs.String("domain", "", "the storage domain (VG) UUID")
	volume := fs.String("volume", "", "the volume (LV) UUID")
	sizeMiB := fs.Uint64("size-mib", 0, "the size to extend the volume to, in MiB")
	timeout := fs.Duration("timeout", time.Minute, "give up waiting for the reply after this long")
	takeOver := fs.Bool("take-over", false, "clear host N's mailbox even when it holds another writer's requests (that writer must be gone)")
	force := forceFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := requireVolumes(*inbox, *outbox); err != nil {
		return err
	}
	if err := mailbox.ValidHostID(*hostID); err != nil {
		return fmt.Errorf("%w: --host-id: %v", errUsage, err)
	}
	dom, err := mailbox.ParseUUID(*domain)
	if err != nil {
		return fmt.Errorf("%w: --domain: %v", errUsage, err)
	}
	vol, err := mailbox.ParseUUID(*volume)
	if err != nil {
		return fmt.Errorf("%w: --volume: %v", errUsage, err)
	}
	if *sizeMiB == 0 || *sizeMiB > mailbox.MaxSizeMiB {
		return fmt.Errorf("%w: --size-mib must be 1..%d", errUsage, uint64(mailbox.MaxSizeMiB))
	}

	h, err := mailbox.OpenHost(mailbox.HostConfig{Inbox: *inbox, Outbox: *outbox, HostID: *hostID, Log: logger,
		TakeOver: *takeOver, IgnoreSignatures: *force})
	if errors.Is(err, mailbox.ErrHostIDInUse) {
		return fmt.Errorf("%w (--take-over clears it all the same)", err)
	}
	if err != nil {
		return withForceHint(err)
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	start := time.Now()
	granted, err := h.Extend(ctx, dom, vol, *sizeMiB)
	elapsed := time.Since(start)
	// Let the clean handshake finish, so the slot is free for the next run.
	closeCtx, cancelClose := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancelClose()
	if cerr := h.Close(closeCtx); cerr != nil {
		logger.Warn().Err(cerr).Msg("closing the mailbox")
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("no reply from the SPM within %v", *timeout)
	case err != nil:
		return fmt.Errorf("extend %s/%s to %d MiB: %w", dom, vol, *sizeMiB, err)
	}
	fmt.Printf("granted: domain %s volume %s size %d MiB (asked %d MiB) in %v\n", dom, vol, granted, *sizeMiB, ms(elapsed))
	return nil
}
