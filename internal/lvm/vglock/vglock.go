// Package vglock takes lvm2's own per-VG lock, so that a local lvm command
// that changes a VG (lvextend, lvchange) or its LVs' tables (lvchange
// --refresh, which takes it shared) and lvwatch do not interleave.
//
// lvm2 (lib/locking/file_locking.c, lib/misc/lvm-flock.c) locks VG vg with
// flock(2) on the file locking_dir/V_vg, which it opens with O_CREAT: shared
// to read, exclusive to change. Releasing an exclusive lock it unlinks the
// file when nobody else holds it, so a lock taken on a file that has been
// unlinked meanwhile is no lock at all: like lvm, take it again until the
// locked file is still the one at the path.
package vglock

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"
)

// Lock is a held lock on a VG.
type Lock struct {
	f *os.File
}

// Waits between attempts while lvm holds the lock: lvm holds it for the
// milliseconds of a command, so start short.
const (
	firstWait = 200 * time.Microsecond
	maxWait   = 10 * time.Millisecond
)

// Shared takes VG vg's lock shared, as lvm does to read the VG, in lvm's lock
// directory dir (lvm.conf global/locking_dir), waiting until ctx ends while
// an lvm command holds it exclusive. It creates dir if missing, as lvm does.
func Shared(ctx context.Context, dir, vg string) (*Lock, error) {
	return take(ctx, dir, vg, unix.LOCK_SH)
}

// Exclusive takes VG vg's lock exclusive, as lvm does to change the VG: no lvm
// command of this host reads or changes the VG, nor loads or resumes a table
// of its LVs, until Unlock.
func Exclusive(ctx context.Context, dir, vg string) (*Lock, error) {
	return take(ctx, dir, vg, unix.LOCK_EX)
}

func take(ctx context.Context, dir, vg string, how int) (*Lock, error) {
	if vg == "" || vg[0] == '#' || filepath.Base(vg) != vg {
		return nil, fmt.Errorf("lock VG %q: not a VG name", vg)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("lock VG %s: %w", vg, err)
	}
	path := filepath.Join(dir, "V_"+vg)
	wait := firstWait
	for {
		l, err := try(path, how)
		if l != nil || err != nil {
			return l, err
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("lock VG %s (%s): held by another process: %w", vg, path, context.Cause(ctx))
		case <-t.C:
		}
		wait = min(2*wait, maxWait)
	}
}

// try takes the lock without waiting: nil, nil when another holder excludes it.
func try(path string, how int) (*Lock, error) {
	for {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_RDWR|unix.O_CLOEXEC, 0o600)
		if err != nil {
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		err = unix.Flock(int(f.Fd()), how|unix.LOCK_NB)
		if errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, nil
		}
		if err != nil {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		var held, now unix.Stat_t
		if unix.Fstat(int(f.Fd()), &held) == nil && unix.Stat(path, &now) == nil && held.Dev == now.Dev && held.Ino == now.Ino {
			return &Lock{f: f}, nil
		}
		f.Close() // unlinked by lvm between our open and flock: try the new file
	}
}

// Unlock releases the lock. It leaves the file, as lvm's shared locks do (lvm
// opens it with O_CREAT either way).
func (l *Lock) Unlock() error { return l.f.Close() }
