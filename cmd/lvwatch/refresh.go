package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/lvwatch/lvwatch/internal/dm"
	"github.com/lvwatch/lvwatch/internal/refresh"
	"github.com/lvwatch/lvwatch/internal/size"
)

func runRefresh(ctx context.Context, args []string) error {
	fs := newFlagSet("refresh")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), "usage: lvwatch refresh [flags] VG/LV\n\n"+
			"Reads the VG's LVM metadata from its PVs and, if the LV's device-mapper table on this host\n"+
			"differs, swaps in the new one, as `lvchange --refresh` does. A live LV is never shrunk.\n"+
			"Give the VG's PVs with --devices, or let it --scan the block devices lvm would.")
		fs.PrintDefaults()
	}
	devices := fs.String("devices", "", "comma-separated PVs of the VG")
	scan := fs.Bool("scan", false, "read the block devices lvm would scan (its devices file or filters) when --devices is not given or does not hold the whole VG")
	readTimeout := fs.Duration("read-timeout", refresh.DefaultReadTimeout, "bound on the wait for lvm's VG lock and on each metadata read")
	swapTimeout := fs.Duration("swap-timeout", refresh.DefaultSwapTimeout, "bound on the table swap; past it the old table stays live")
	stateDir := fs.String("state-dir", refresh.DefaultStateDir, "where swaps in progress are recorded, for the next start to finish")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	vg, lv, ok := strings.Cut(fs.Arg(0), "/")
	if fs.NArg() != 1 || !ok || vg == "" || lv == "" {
		return fmt.Errorf("%w: want one VG/LV", errUsage)
	}
	var pvs []string
	if *devices != "" {
		pvs = strings.Split(*devices, ",")
	} else if !*scan {
		return fmt.Errorf("%w: give the VG's PVs with --devices, or --scan", errUsage)
	}
	ctl, err := dm.Open()
	if err != nil {
		return err
	}
	defer ctl.Close()
	r, err := refresh.New(refresh.Kernel(ctl), refresh.Options{Log: logger, Scan: *scan,
		ReadTimeout: *readTimeout, SwapTimeout: *swapTimeout, StateDir: *stateDir})
	if err != nil {
		return err
	}
	res, err := r.Refresh(ctx, vg, lv, pvs)
	if err != nil {
		return err
	}
	if res.Changed {
		fmt.Printf("%s/%s: %s -> %s in %v (metadata %v, swap %v)\n", vg, lv,
			size.Format(res.OldSize), size.Format(res.NewSize), ms(res.Total), ms(res.Metadata), ms(res.Swap))
	} else {
		fmt.Printf("%s/%s: %s, table unchanged (%v)\n", vg, lv, size.Format(res.NewSize), ms(res.Total))
	}
	return nil
}

// ms rounds a duration for people: 4.213ms.
func ms(d time.Duration) time.Duration { return d.Round(time.Microsecond) }
