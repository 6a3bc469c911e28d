package lvm_test

// Tier-1 tests against real LVM2 on loop devices, metadata only (no
// device-mapper needed): every VG, PV, LV and segment read from disk must match
// what lvm reports, and every table what lvm would load.

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/lvwatch/lvwatch/internal/dm"
	"github.com/lvwatch/lvwatch/internal/lvm"
	"github.com/lvwatch/lvwatch/internal/lvm/lvmtest"
)

const (
	pvSize   = 1 << 30
	mdaArgs  = "--metadatasize=128k" // 188 KiB areas: the text wraps every few commits
	dataAlgn = "--dataalignment=64k"
)

// fixture is a VG over three PVs whose LVs were grown in turns, so that their
// segments interleave across the PVs: linear LVs (one with hyphens in its
// name), a 2-stripe and a 3-stripe LV.
type fixture struct {
	env *lvmtest.Env
	vg  string
	lvs []string
}

func newFixture(t testing.TB, vg string, rounds int) *fixture {
	t.Helper()
	env := lvmtest.New(t, 3, pvSize)
	p := env.Paths()
	env.CreateVG(vg, p, []string{mdaArgs, dataAlgn}, []string{"-s", "1m"})
	f := &fixture{env: env, vg: vg, lvs: []string{"lin-a", "lv-b--c", "str2", "str3"}}
	create := func(args ...string) string {
		return "lvcreate -q -y -Zn -Wn " + strings.Join(args, " ")
	}
	cmds := []string{
		create("-l", "1", "-n", "lin-a", vg, p[0]),
		create("-l", "1", "-n", "lv-b--c", vg, p[1]),
		create("-i", "2", "-I", "64k", "-l", "2", "-n", "str2", vg, p[0], p[1]),
		create("-i", "3", "-I", "128k", "-l", "3", "-n", "str3", vg),
	}
	for i := 0; i < rounds; i++ {
		cmds = append(cmds,
			fmt.Sprintf("lvextend -q -l +1 %s/lin-a %s", vg, p[i%3]),
			fmt.Sprintf("lvextend -q -l +1 %s/lv-b--c %s", vg, p[(i+1)%3]))
		if i%3 == 0 {
			cmds = append(cmds, fmt.Sprintf("lvextend -q -l +2 %s/str2", vg))
		}
		if i%5 == 0 {
			cmds = append(cmds, fmt.Sprintf("lvextend -q -l +3 %s/str3", vg))
		}
		if i%7 == 0 { // right after its last extension: lvm merges the two
			cmds = append(cmds, fmt.Sprintf("lvextend -q -l +2 %s/lin-a %s", vg, p[i%3]))
		}
	}
	if err := env.Shell(cmds); err != nil {
		t.Fatal(err)
	}
	return f
}

// extend grows lin-a by one extent in its own lvm process: one commit.
func (f *fixture) extend(t testing.TB) {
	t.Helper()
	f.env.MustRun("lvextend", "-q", "-l", "+1", f.vg+"/lin-a")
}

func atoi(t testing.TB, s string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(strings.TrimSpace(s), 10, 64)
	if err != nil {
		t.Fatalf("number %q: %v", s, err)
	}
	return n
}

func nodash(s string) string { return strings.ReplaceAll(s, "-", "") }

var deviceRE = regexp.MustCompile(`^(.+)\((\d+)\)$`)

// compareWithLVM checks got against lvm's own reports of the VG, and each LV's
// table against the one derived from those reports.
func compareWithLVM(t *testing.T, env *lvmtest.Env, got *lvm.VG) {
	t.Helper()
	vgRows := env.MustReport("vgs", "-o", "vg_name,vg_uuid,vg_seqno,vg_extent_size,pv_count,lv_count", got.Name)
	if len(vgRows) != 1 {
		t.Fatalf("vgs: %d rows", len(vgRows))
	}
	v := vgRows[0]
	if got.ID != v["vg_uuid"] || got.Seqno != atoi(t, v["vg_seqno"]) || got.ExtentSize != atoi(t, v["vg_extent_size"]) {
		t.Errorf("VG: id %s seqno %d extent %d; lvm: %s %s %s", got.ID, got.Seqno, got.ExtentSize, v["vg_uuid"], v["vg_seqno"], v["vg_extent_size"])
	}
	if uint64(len(got.PVs)) != atoi(t, v["pv_count"]) || uint64(len(got.LVs)) != atoi(t, v["lv_count"]) {
		t.Errorf("VG: %d PVs %d LVs; lvm: %s %s", len(got.PVs), len(got.LVs), v["pv_count"], v["lv_count"])
	}

	// PVs: uuid, device, pe_start, pe_count.
	devNum := map[string]string{}
	for _, d := range env.Devices {
		devNum[d.Path] = fmt.Sprintf("%d:%d", d.Major, d.Minor)
	}
	peStart := map[string]uint64{}
	pvByID := map[string]map[string]string{}
	for _, r := range env.MustReport("pvs", "-o", "pv_name,pv_uuid,pe_start,pv_pe_count,vg_name") {
		if r["vg_name"] == got.Name {
			pvByID[r["pv_uuid"]] = r
			peStart[r["pv_name"]] = atoi(t, r["pe_start"])
		}
	}
	pvDevice := map[string]string{}
	for _, pv := range got.PVs {
		r, ok := pvByID[pv.ID]
		if !ok {
			t.Errorf("PV %s %s: not in pvs", pv.Name, pv.ID)
			continue
		}
		if pv.Device != r["pv_name"] || pv.PEStart != atoi(t, r["pe_start"]) || pv.PECount != atoi(t, r["pv_pe_count"]) {
			t.Errorf("PV %s: %s pe_start %d pe_count %d; lvm: %v", pv.Name, pv.Device, pv.PEStart, pv.PECount, r)
		}
		if fmt.Sprintf("%d:%d", pv.Major, pv.Minor) != devNum[pv.Device] {
			t.Errorf("PV %s on %s: %d:%d, want %s", pv.Name, pv.Device, pv.Major, pv.Minor, devNum[pv.Device])
		}
		pvDevice[pv.Name] = pv.Device
	}

	// LVs: size, dm name, dm uuid.
	for _, r := range env.MustReport("lvs", "-a", "-o", "lv_name,lv_uuid,lv_size,lv_dm_path", got.Name) {
		lv, err := got.LV(r["lv_name"])
		if err != nil {
			t.Errorf("lvs lists %s: %v", r["lv_name"], err)
			continue
		}
		if lv.ID != r["lv_uuid"] || lv.Sectors(got) != atoi(t, r["lv_size"]) {
			t.Errorf("LV %s: id %s %d sectors; lvm: %v", lv.Name, lv.ID, lv.Sectors(got), r)
		}
		if "/dev/mapper/"+lvm.DMName(got.Name, lv.Name) != r["lv_dm_path"] {
			t.Errorf("DMName(%s, %s) = %s; lvm: %s", got.Name, lv.Name, lvm.DMName(got.Name, lv.Name), r["lv_dm_path"])
		}
		if u, _ := got.DMUUID(lv.Name); u != "LVM-"+nodash(got.ID)+nodash(r["lv_uuid"]) {
			t.Errorf("DMUUID(%s) = %s", lv.Name, u)
		}
	}

	// Segments, and the table derived from them.
	segs := map[string][]map[string]string{}
	for _, r := range env.MustReport("lvs", "-a", "--segments", "-o",
		"lv_name,seg_start_pe,seg_size_pe,segtype,stripes,stripe_size,devices", got.Name) {
		segs[r["lv_name"]] = append(segs[r["lv_name"]], r)
	}
	for i := range got.LVs {
		lv := &got.LVs[i]
		rows := segs[lv.Name]
		sort.Slice(rows, func(a, b int) bool { return atoi(t, rows[a]["seg_start_pe"]) < atoi(t, rows[b]["seg_start_pe"]) })
		if len(rows) != len(lv.Segments) {
			t.Errorf("LV %s: %d segments; lvm: %d", lv.Name, len(lv.Segments), len(rows))
			continue
		}
		var want []dm.Target
		var start uint64
		for j, r := range rows {
			s := lv.Segments[j]
			typ := "striped"
			if s.StripeCount == 1 {
				typ = "linear"
			}
			var devs []string
			for _, a := range s.Stripes {
				devs = append(devs, fmt.Sprintf("%s(%d)", pvDevice[a.PV], a.Start))
			}
			if s.StartExtent != atoi(t, r["seg_start_pe"]) || s.ExtentCount != atoi(t, r["seg_size_pe"]) ||
				typ != r["segtype"] || s.StripeCount != atoi(t, r["stripes"]) || s.StripeSize != atoi(t, r["stripe_size"]) ||
				strings.Join(devs, ",") != r["devices"] {
				t.Errorf("LV %s segment %d: start %d count %d %s stripes %d size %d on %s; lvm: %v",
					lv.Name, j, s.StartExtent, s.ExtentCount, typ, s.StripeCount, s.StripeSize, strings.Join(devs, ","), r)
			}
			// The target lvm would load, from lvm's report alone.
			length := atoi(t, r["seg_size_pe"]) * got.ExtentSize
			var areas []string
			for _, d := range strings.Split(r["devices"], ",") {
				m := deviceRE.FindStringSubmatch(d)
				if m == nil {
					t.Fatalf("lvs devices %q", r["devices"])
				}
				areas = append(areas, fmt.Sprintf("%s %d", devNum[m[1]], peStart[m[1]]+atoi(t, m[2])*got.ExtentSize))
			}
			tg := dm.Target{Start: start, Length: length, Type: r["segtype"], Params: strings.Join(areas, " ")}
			if r["segtype"] == "striped" {
				tg.Params = fmt.Sprintf("%s %s %s", r["stripes"], r["stripe_size"], tg.Params)
			}
			want = append(want, tg)
			start += length
		}
		table, err := got.Table(lv.Name)
		if err != nil {
			t.Errorf("Table(%s): %v", lv.Name, err)
			continue
		}
		if lvm.FormatTable(table) != lvm.FormatTable(want) {
			t.Errorf("Table(%s):\n%s\nfrom lvs:\n%s", lv.Name, lvm.FormatTable(table), lvm.FormatTable(want))
		}
	}
}

// wrapped reports whether the committed text of every PV's first metadata area
// wraps around the area's end.
func wrapped(t testing.TB, paths []string) bool {
	t.Helper()
	all := true
	for _, p := range paths {
		info, err := lvm.InspectDevice(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(info.Areas) == 0 || info.Areas[0].Header == nil {
			t.Fatalf("%s: no metadata area: %+v", p, info)
		}
		all = all && info.Areas[0].Text.Wrapped()
	}
	return all
}

// extendUntilWrapped commits until the committed text wraps on every PV.
func (f *fixture) extendUntilWrapped(t testing.TB) {
	t.Helper()
	for i := 0; !wrapped(t, f.env.Paths()); i++ {
		if i == 100 {
			t.Fatal("metadata text never wrapped in 100 commits")
		}
		f.extend(t)
	}
}

func TestReadVGMatchesLVM(t *testing.T) {
	f := newFixture(t, "lvwatch-t-match", 90)

	vg, err := lvm.ReadVG(t.Context(), f.vg, f.env.Paths())
	if err != nil {
		t.Fatal(err)
	}
	if len(vg.Warnings) > 0 {
		t.Errorf("warnings: %q", vg.Warnings)
	}
	nseg := 0
	for _, lv := range vg.LVs {
		nseg += len(lv.Segments)
	}
	t.Logf("VG %s seqno %d: %d LVs, %d segments", vg.Name, vg.Seqno, len(vg.LVs), nseg)
	if nseg < 150 {
		t.Errorf("only %d segments: the fixture did not fragment", nseg)
	}
	compareWithLVM(t, f.env, vg)

	// Scanning every block device of the host finds the same.
	scanned, err := lvm.ScanVG(t.Context(), f.vg, &lvm.HostConfig{})
	if err != nil {
		t.Fatal(err)
	}
	compareWithLVM(t, f.env, scanned)

	// The text wraps around the end of the metadata area: still read right.
	f.extendUntilWrapped(t)
	vg, err = lvm.ReadVG(t.Context(), f.vg, f.env.Paths())
	if err != nil {
		t.Fatal(err)
	}
	var used *lvm.MetadataCopy
	for i := range vg.Copies {
		if vg.Copies[i].Used {
			used = &vg.Copies[i]
		}
	}
	if used == nil || !used.Location.Wrapped() {
		t.Fatalf("the copy used is not a wrapped text: %+v", vg.Copies)
	}
	t.Logf("wrapped text: %d bytes at %d + %d bytes at %d", used.Location.Len1, used.Location.Offset1, used.Location.Len2, used.Location.Offset2)
	if len(vg.Copies) != 3 {
		t.Errorf("%d copies, want one per PV: %+v", len(vg.Copies), vg.Copies)
	}
	compareWithLVM(t, f.env, vg)
}

// copyMetadata copies the first n bytes of each device (labels and metadata
// areas) into sparse image files as large as the devices, read past the page
// cache as lvm wrote them.
func copyMetadata(t testing.TB, dir, tag string, devices []string, n int64) []string {
	t.Helper()
	var out []string
	for i, d := range devices {
		img := filepath.Join(dir, fmt.Sprintf("%s-pv%d.img", tag, i))
		cmd := exec.Command("dd", "if="+d, "of="+img, "bs=64k", fmt.Sprintf("count=%d", n/(64<<10)), "iflag=direct", "status=none")
		if b, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("dd: %v\n%s", err, b)
		}
		if err := os.Truncate(img, pvSize); err != nil {
			t.Fatal(err)
		}
		out = append(out, img)
	}
	return out
}

func TestStaleAndCorruptCopies(t *testing.T) {
	f := newFixture(t, "lvwatch-t-stale", 30)
	dir := t.TempDir()
	old := copyMetadata(t, dir, "old", f.env.Paths(), 192<<10)
	oldVG, err := lvm.ReadVG(t.Context(), f.vg, old)
	if err != nil {
		t.Fatal(err)
	}
	f.extend(t)
	f.extendUntilWrapped(t)
	cur := copyMetadata(t, dir, "new", f.env.Paths(), 192<<10)
	seqno := atoi(t, f.env.MustReport("vgs", "-o", "vg_seqno", f.vg)[0]["vg_seqno"])
	if seqno <= oldVG.Seqno {
		t.Fatalf("seqno %d after commits on top of %d", seqno, oldVG.Seqno)
	}

	// One PV still has older metadata: the newest wins, with a warning.
	for _, devs := range [][]string{{old[0], cur[1], cur[2]}, {cur[1], old[0]}, {cur[2], old[0], cur[1]}} {
		vg, err := lvm.ReadVG(t.Context(), f.vg, devs)
		if err != nil {
			t.Fatal(err)
		}
		if vg.Seqno != seqno {
			t.Errorf("%v: seqno %d, want %d", devs, vg.Seqno, seqno)
		}
		if !hasWarning(vg, old[0], "stale") {
			t.Errorf("%v: no warning about the stale copy: %q", devs, vg.Warnings)
		}
		for _, c := range vg.Copies {
			if c.Used && c.Device == old[0] {
				t.Errorf("%v: used the stale copy", devs)
			}
		}
	}
	if vg, err := lvm.ReadVG(t.Context(), f.vg, old[:1]); err != nil || vg.Seqno != oldVG.Seqno {
		t.Errorf("old copy alone: %v, %v", vg, err)
	}

	// One corrupt byte in the wrapped part of pv0's text: a checksum error.
	info, err := lvm.InspectDevice(cur[0])
	if err != nil {
		t.Fatal(err)
	}
	loc := info.Areas[0].Text
	if !loc.Wrapped() {
		t.Fatalf("text not wrapped: %+v", loc)
	}
	flipByte(t, cur[0], int64(loc.Offset2+loc.Len2/2))
	_, err = lvm.ReadVG(t.Context(), f.vg, cur[:1])
	var ce *lvm.ChecksumError
	if !errors.As(err, &ce) {
		t.Fatalf("corrupt copy alone: %v, want a checksum error", err)
	}
	t.Logf("corrupt copy alone: %v", err)
	vg, err := lvm.ReadVG(t.Context(), f.vg, cur)
	if err != nil {
		t.Fatalf("with good copies beside the corrupt one: %v", err)
	}
	if vg.Seqno != seqno || !hasWarning(vg, cur[0], "checksum") {
		t.Errorf("seqno %d, warnings %q", vg.Seqno, vg.Warnings)
	}

	// A corrupt byte in the first part too, and in the mda header.
	flipByte(t, cur[1], int64(loc.Offset1+loc.Len1/2))
	if _, err := lvm.ReadVG(t.Context(), f.vg, cur[1:2]); !errors.As(err, &ce) {
		t.Errorf("corrupt first part: %v, want a checksum error", err)
	}
	flipByte(t, cur[2], int64(info.Areas[0].Header.Start+100))
	if _, err := lvm.ReadVG(t.Context(), f.vg, cur[2:3]); err == nil || !strings.Contains(err.Error(), "checksum") {
		t.Errorf("corrupt mda header: %v, want a header checksum error", err)
	} else {
		t.Logf("corrupt mda header: %v", err)
	}
	if _, err := lvm.ReadVG(t.Context(), f.vg, cur); err == nil {
		t.Error("every copy corrupt, yet ReadVG succeeded")
	} else {
		t.Logf("every copy corrupt: %v", err)
	}
	// Images are no block devices: no table from them.
	if _, err := oldVG.Table("lin-a"); err == nil {
		t.Error("Table on image files succeeded")
	}
}

func hasWarning(vg *lvm.VG, dev, word string) bool {
	for _, w := range vg.Warnings {
		if strings.Contains(w, dev) && strings.Contains(w, word) {
			return true
		}
	}
	return false
}

func flipByte(t testing.TB, path string, off int64) {
	t.Helper()
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	b := make([]byte, 1)
	if _, err := f.ReadAt(b, off); err != nil {
		t.Fatal(err)
	}
	b[0] ^= 0x20
	if _, err := f.WriteAt(b, off); err != nil {
		t.Fatal(err)
	}
}

// TestMergeLikeLVM hands lvm metadata whose LV has contiguous segments that lvm
// never writes itself, and checks that lvm and ParseMetadata merge them alike.
func TestMergeLikeLVM(t *testing.T) {
	env := lvmtest.New(t, 2, 256<<20)
	p := env.Paths()
	const vgName = "lvwatch-t-merge"
	env.CreateVG(vgName, p, nil, []string{"-s", "4m"})
	env.MustRun("lvcreate", "-q", "-y", "-Zn", "-Wn", "-l", "6", "-n", "joined", vgName, p[0])
	env.MustRun("lvcreate", "-q", "-y", "-Zn", "-Wn", "-l", "6", "-n", "apart", vgName, p[1])
	env.MustRun("lvcreate", "-q", "-y", "-Zn", "-Wn", "-i", "2", "-I", "64k", "-l", "8", "-n", "striped", vgName)
	backup := filepath.Join(t.TempDir(), "vg.txt")
	env.MustRun("vgcfgbackup", "-q", "-f", backup, vgName)
	text, err := os.ReadFile(backup)
	if err != nil {
		t.Fatal(err)
	}
	// joined: 0-5 on pv0 → 0-1, 2-5 contiguous: lvm merges them back.
	// apart: 0-5 on pv1 → 0-2 and 3-5 moved 10 extents on: two segments.
	// striped: 0-7 → 0-3 and 4-7, each stripe contiguous: merged.
	edited := splitSegment(t, string(text), "joined", 2, 0)
	edited = splitSegment(t, edited, "apart", 3, 10)
	edited = splitSegment(t, edited, "striped", 4, 0)
	if err := os.WriteFile(backup, []byte(edited), 0o600); err != nil {
		t.Fatal(err)
	}
	vg, err := lvm.ParseMetadata([]byte(edited))
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]int{"joined": 1, "apart": 2, "striped": 1} {
		lv, err := vg.LV(name)
		if err != nil {
			t.Fatal(err)
		}
		if lv.SegmentCount != 2 || len(lv.Segments) != want {
			t.Errorf("%s: %d segments in the text, %d merged; want 2 and %d", name, lv.SegmentCount, len(lv.Segments), want)
		}
	}
	env.MustRun("vgcfgrestore", "-q", "-f", backup, vgName)
	fromDisk, err := lvm.ReadVG(t.Context(), vgName, p)
	if err != nil {
		t.Fatal(err)
	}
	compareWithLVM(t, env, fromDisk)
	for _, lv := range vg.LVs {
		disk, err := fromDisk.LV(lv.Name)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(lv.Segments, disk.Segments) {
			t.Errorf("%s: segments of the edited text %+v, as lvm restored it %+v", lv.Name, lv.Segments, disk.Segments)
		}
	}
}

// splitSegment rewrites LV lv's only segment (as vgcfgbackup writes it) into
// two: the first at extents, the second moved shift extents on each stripe.
func splitSegment(t testing.TB, text, lv string, at, shift int) string {
	t.Helper()
	re := regexp.MustCompile(`(?s)(\n\t\t` + regexp.QuoteMeta(lv) + ` \{\n.*?segment_count = )1(\n.*?)\n(\t\t\tsegment1 \{\n.*?\n\t\t\t\})`)
	m := re.FindStringSubmatchIndex(text)
	if m == nil {
		t.Fatalf("LV %s not found in:\n%s", lv, text)
	}
	seg := text[m[6]:m[7]]
	count := regexp.MustCompile(`extent_count = (\d+)`)
	n, _ := strconv.Atoi(count.FindStringSubmatch(seg)[1])
	stripes := regexp.MustCompile(`("pv\d+", )(\d+)`)
	first := count.ReplaceAllString(seg, fmt.Sprintf("extent_count = %d", at))
	stripeCount := len(stripes.FindAllString(seg, -1))
	second := strings.Replace(seg, "segment1", "segment2", 1)
	second = strings.Replace(second, "start_extent = 0", fmt.Sprintf("start_extent = %d", at), 1)
	second = count.ReplaceAllString(second, fmt.Sprintf("extent_count = %d", n-at))
	second = stripes.ReplaceAllStringFunc(second, func(s string) string {
		sm := stripes.FindStringSubmatch(s)
		pe, _ := strconv.Atoi(sm[2])
		return fmt.Sprintf("%s%d", sm[1], pe+at/stripeCount+shift)
	})
	return text[:m[2]] + text[m[2]:m[3]] + "2" + text[m[4]:m[5]] + "\n" + first + "\n" + second + text[m[7]:]
}

// TestCaptureFuzzSeeds captures what the installed lvm2 writes in the shape of
// the fuzz seeds and checks that it parses. With LVWATCH_CAPTURE_SEEDS=1 it
// writes them into testdata/ (the committed seed corpora and lvm2-metadata.txt)
// instead of a temporary directory.
func TestCaptureFuzzSeeds(t *testing.T) {
	out := t.TempDir()
	if os.Getenv("LVWATCH_CAPTURE_SEEDS") == "1" {
		out = "testdata"
	}
	f := newFixture(t, "lvwatch-seed", 5)
	dev := f.env.Paths()[0]
	texts, err := lvm.ReadMetadataText(dev)
	if err != nil {
		t.Fatal(err)
	}
	text := texts[0]
	vg, err := lvm.ParseMetadata(text)
	if err != nil {
		t.Fatal(err)
	}
	img := make([]byte, 8192)
	fd, err := os.Open(dev)
	if err != nil {
		t.Fatal(err)
	}
	_, err = fd.ReadAt(img, 0)
	fd.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := lvm.ParseLabel(img[:2048]); err != nil {
		t.Errorf("label written by lvm2: %v", err)
	}
	if _, err := lvm.ParseMDAHeader(img[4096:4608], 4096); err != nil {
		t.Errorf("metadata area header written by lvm2: %v", err)
	}
	lvmVersion, _ := exec.Command("lvm", "version").Output()
	version := regexp.MustCompile(`LVM version:\s+(\d+\.\d+\.\d+)`).FindSubmatch(lvmVersion)
	name := "lvm2"
	if version != nil {
		name += "-" + string(version[1])
	}
	write := func(path string, args ...string) {
		t.Helper()
		path = filepath.Join(out, path)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		body := "go test fuzz v1\n" + strings.Join(args, "\n") + "\n"
		if err := os.WriteFile(path, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bytesArg := func(b []byte) string { return "[]byte(" + strconv.Quote(string(b)) + ")" }
	write("fuzz/FuzzParseMetadata/"+name, bytesArg(text))
	write("fuzz/FuzzParseConfig/"+name, bytesArg(text))
	write("fuzz/FuzzParseLabel/"+name, bytesArg(img[:2048]))
	write("fuzz/FuzzParseMDAHeader/"+name, bytesArg(img[4096:4608]), "uint64(4096)", fmt.Sprintf("uint64(%d)", pvSize), "bool(false)")
	if err := os.WriteFile(filepath.Join(out, "lvm2-metadata.txt"), []byte(strings.TrimRight(string(text), "\x00")), 0o644); err != nil {
		t.Fatal(err)
	}
	summary := fmt.Sprintf("%s seqno %d extent %d PVs %d:", vg.Name, vg.Seqno, vg.ExtentSize, len(vg.PVs))
	rows := f.env.MustReport("lvs", "-o", "lv_name,seg_count,lv_size", f.vg)
	for _, lv := range vg.LVs {
		for _, r := range rows {
			if r["lv_name"] == lv.Name {
				summary += fmt.Sprintf(" %s=%s/%d", lv.Name, r["seg_count"], atoi(t, r["lv_size"])/vg.ExtentSize)
			}
		}
	}
	t.Logf("lvm's view, for realMetadataSummary: %q", summary)
}

// TestMetadataAreaLayouts: a PV with two metadata areas (the second at the end
// of the device), one with none (found by its label alone), and an area lvm is
// told to ignore.
func TestMetadataAreaLayouts(t *testing.T) {
	env := lvmtest.New(t, 3, 256<<20)
	p := env.Paths()
	const vgName = "lvwatch-t-areas"
	env.MustRun("pvcreate", "-q", "-y", "--pvmetadatacopies", "2", p[0])
	env.MustRun("pvcreate", "-q", "-y", "--pvmetadatacopies", "0", p[1])
	env.MustRun("pvcreate", "-q", "-y", p[2])
	env.RemoveVGOnCleanup(vgName)
	env.MustRun("vgcreate", "-q", "-s", "4m", vgName, p[0], p[1], p[2])
	env.MustRun("lvcreate", "-q", "-y", "-Zn", "-Wn", "-i", "3", "-l", "9", "-n", "wide", vgName)
	env.MustRun("lvcreate", "-q", "-y", "-Zn", "-Wn", "-l", "70", "-n", "span", vgName, p[1], p[0])
	env.MustRun("pvchange", "-q", "--metadataignore", "y", p[2])

	vg, err := lvm.ReadVG(t.Context(), vgName, p)
	if err != nil {
		t.Fatal(err)
	}
	compareWithLVM(t, env, vg)
	areas := map[string][]int{}
	for _, c := range vg.Copies {
		areas[c.Device] = append(areas[c.Device], c.Area)
		if c.Err != nil || c.Seqno != vg.Seqno {
			t.Errorf("copy %+v", c)
		}
	}
	if !reflect.DeepEqual(areas, map[string][]int{p[0]: {1, 2}}) {
		t.Errorf("copies read from %v; want both areas of %s only", areas, p[0])
	}
	info, err := lvm.InspectDevice(p[2])
	if err != nil || len(info.Areas) != 1 || !info.Areas[0].Header.Ignored() {
		t.Errorf("%s: %+v, %v; want an ignored area", p[2], info, err)
	}
	if len(vg.Warnings) > 0 {
		t.Errorf("warnings: %q", vg.Warnings)
	}
}
