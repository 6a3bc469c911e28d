package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/lvwatch/lvwatch/internal/config"
	"github.com/lvwatch/lvwatch/internal/size"
	"github.com/lvwatch/lvwatch/internal/spm"
)

func runSPM(ctx context.Context, args []string) error {
	fs := newFlagSet("spm")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: lvwatch spm --domain VG [--inbox PATH --outbox PATH] [--devices DEV,...]\n"+
			"       lvwatch spm --config FILE\n\n"+
			"Serves the storage domains' extend requests as their SPM: validates each, extends the LV\n"+
			"with LVM2 and replies. A request the VG has no room for waits, with no reply, until an\n"+
			"operator adds a PV (vgextend). Runs until SIGTERM or ^C.")
		fs.PrintDefaults()
	}
	cfgPath := fs.String("config", "", "the configuration file ([spm] and [[spm.domain]] sections); excludes the domain flags")
	domain := fs.String("domain", "", "the storage domain: its VG, named by the domain UUID")
	inbox, outbox := mailboxFlags(fs)
	devices := fs.String("devices", "", "comma-separated PVs LVM may see (default: found by scanning as lvm does)")
	maxLV := fs.String("max-lv-size", "", "refuse requests above this LV size (default "+size.Format(spm.DefaultMaxLVSize)+")")
	reserve := fs.String("reserve", "", "space of the VG never handed out (default 0)")
	status := fs.String("status", "", "write a JSON status snapshot to this file whenever it changes")
	force := forceFlag(fs)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	cfg, err := spmConfig(*cfgPath, *domain, *inbox, *outbox, *devices, *maxLV, *reserve)
	if err != nil {
		return err
	}
	cfg.Log, cfg.IgnoreSignatures = logger, *force
	s, err := spm.Start(cfg)
	if err != nil {
		return withForceHint(err)
	}
	defer s.Close()
	if *status == "" {
		<-ctx.Done()
		return nil
	}
	var last []byte
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		st := s.Status()
		if key, err := json.Marshal(withoutIO(st)); err == nil && !bytes.Equal(key, last) {
			if snap, err := json.MarshalIndent(st, "", "  "); err == nil {
				if err := writeFileAtomic(*status, append(snap, '\n')); err != nil {
					logger.Warn().Err(err).Msg("cannot write the status snapshot")
				}
			}
			last = key
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// withoutIO is st without the mailboxes' I/O counters, which change at every
// poll: the snapshot is rewritten when something else changed, so an idle SPM
// writes nothing (the counters written are those of the last write).
func withoutIO(st spm.Status) spm.Status {
	st.Mailboxes = slices.Clone(st.Mailboxes)
	for i := range st.Mailboxes {
		ms := &st.Mailboxes[i].Stats
		ms.EventReads, ms.FullScans, ms.HostReads, ms.OutboxReads = 0, 0, 0, 0
	}
	return st
}

// spmConfig builds the SPM's configuration from the file or from the flags.
func spmConfig(path, domain, inbox, outbox, devices, maxLV, reserve string) (spm.Config, error) {
	if path != "" {
		if domain != "" || inbox != "" || outbox != "" || devices != "" || maxLV != "" || reserve != "" {
			return spm.Config{}, fmt.Errorf("%w: --config excludes --domain, --inbox, --outbox, --devices, --max-lv-size and --reserve", errUsage)
		}
		f, err := config.Load(path)
		if err != nil {
			return spm.Config{}, err
		}
		return f.SPMConfig()
	}
	if domain == "" {
		return spm.Config{}, fmt.Errorf("%w: --domain or --config is required", errUsage)
	}
	if (inbox == "") != (outbox == "") {
		return spm.Config{}, fmt.Errorf("%w: --inbox and --outbox go together", errUsage)
	}
	dc := spm.DomainConfig{VG: domain, Inbox: inbox, Outbox: outbox}
	if devices != "" {
		dc.Devices = strings.Split(devices, ",")
	}
	if err := parseSizes(sizeFlag{"--max-lv-size", maxLV, &dc.MaxLVSize}, sizeFlag{"--reserve", reserve, &dc.Reserve}); err != nil {
		return spm.Config{}, err
	}
	return spm.Config{Domains: []spm.DomainConfig{dc}}, nil
}

// sizeFlag is a size given on the command line ("" when it was not) and where it goes.
type sizeFlag struct {
	name, value string
	dst         *uint64
}

// parseSizes parses each flag given into its destination, leaving the others.
func parseSizes(flags ...sizeFlag) error {
	for _, f := range flags {
		if f.value == "" {
			continue
		}
		n, err := size.Parse(f.value)
		if err != nil {
			return fmt.Errorf("%w: %s: %v", errUsage, f.name, err)
		}
		*f.dst = n
	}
	return nil
}

// writeFileAtomic replaces path with data: a reader sees the old snapshot or the new one.
func writeFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
