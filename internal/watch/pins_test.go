package watch

import (
	"errors"
	"os"
	"slices"
	"testing"

	"github.com/cilium/ebpf/link"
)

// What an operator sees of a watcher's pins, and removes once no process
// holds them.
func TestDevicePinsInspectAndRemove(t *testing.T) { eachProbe(t, testDevicePinsInspectAndRemove) }

func testDevicePinsInspectAndRemove(t *testing.T, probe Probe) {
	dir := testPinDir(t)
	t.Cleanup(func() { os.RemoveAll(dir) })
	w := mustOpen(t, Options{PinDir: dir, Probe: probe})
	t.Cleanup(func() { w.Close() }) // before the removal: a no-op once closed
	r := bioRunner{t: t, probe: ProbeTracepoint, prog: loadTestProgram(t, w, bpfProgLvwTestRec)}
	mustArm(t, w, fakeDev, 100*512)
	mustArm(t, w, otherDev, 100*512)
	r.write(otherDev, 100, 8) // fires: still in lvw_watch, no longer armed

	p := inspect(t, dir)
	if !p.Locked || p.Armings != 2 || p.Armed != 1 || len(p.Maps) != len(w.objs.byName()) || len(p.Other) != 0 {
		t.Errorf("pins of a live watcher: %+v, want locked, 2 armings, 1 armed, %d maps", p, len(w.objs.byName()))
	}
	wantProgram := map[Probe]string{ProbeBTF: bpfProgLvwBioBtf, ProbeTracepoint: bpfProgLvwBioQueue}[probe]
	if l := p.Link; l == nil || l.Probe != probe || l.Program != wantProgram || l.Tracepoint != "block_bio_queue" {
		t.Errorf("pinned link %+v, want the %s program %s on block_bio_queue", l, probe, wantProgram)
	}
	if err := RemovePins(dir); !errors.Is(err, ErrBusy) {
		t.Fatalf("RemovePins of a live watcher's pins = %v, want ErrBusy", err)
	}

	if err := w.Close(); err != nil { // keeps the pins and the program attached
		t.Fatal(err)
	}
	p = inspect(t, dir)
	if p.Locked || p.Link == nil || p.Armings != 2 {
		t.Fatalf("pins left by a closed watcher: %+v, want unlocked, the link, 2 armings", p)
	}
	if err := RemovePins(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s after RemovePins: %v", dir, err)
	}
	if l, err := link.NewFromID(p.Link.ID); !errors.Is(err, os.ErrNotExist) {
		if err == nil {
			l.Close()
		}
		t.Errorf("link %d still attached after RemovePins (%v)", p.Link.ID, err)
	}
}

// A link of an lvw_ program that no pin holds is listed apart.
func TestDeviceLooseLinks(t *testing.T) {
	requireBPF(t)
	attachWriteCounter(t, fakeDev)
	holders, err := FindHolders()
	if err != nil {
		t.Fatal(err)
	}
	loose, err := LooseLinks(nil, holders)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(loose, func(l LooseLink) bool { return l.Program == "lvw_test_count" && l.Probe == ProbeTracepoint }) {
		t.Errorf("loose links %+v lack the test's lvw_test_count", loose)
	}
}

func inspect(t *testing.T, dir string) Pins {
	t.Helper()
	holders, err := FindHolders()
	if err != nil {
		t.Fatal(err)
	}
	p, err := InspectPins(dir, holders)
	if err != nil {
		t.Fatal(err)
	}
	return p
}
