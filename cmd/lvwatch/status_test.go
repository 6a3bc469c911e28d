package main

import (
	"encoding/json"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/lvwatch/lvwatch/internal/agent"
	"github.com/lvwatch/lvwatch/internal/mailbox"
	"github.com/lvwatch/lvwatch/internal/resume"
	"github.com/lvwatch/lvwatch/internal/spm"
	"github.com/lvwatch/lvwatch/internal/statusd"
)

const (
	testVG  = "3f8e9c3a-5b4e-4a43-9d6e-1f2a3b4c5d6e"
	testLV1 = "d772f1c6-3ebb-43c3-a42e-73fcd8255a5f"
	testLV2 = "8adbc85e-e554-4ae0-b318-8a5465fe5fe1"
)

var testSince = time.Date(2026, 3, 14, 15, 9, 26, 535000000, time.UTC)

// testStatus is an agent with two LVs, one extended and one waiting for a VG
// with no room, and the SPM here.
func testStatus() agent.Status {
	return agent.Status{
		HostID: 7,
		Volumes: []agent.VolumeStatus{
			{
				VG: testVG, LV: testLV1, Device: "/dev/mapper/x-y", Size: 3 << 30, MaxSize: 11 << 30,
				Threshold: 5 << 29, High: 5<<29 + 4096, State: agent.StateArmed, Extensions: 2, Since: testSince,
				Last: &agent.Phases{Detect: 41 * time.Microsecond, Request: 8700 * time.Microsecond, Refresh: 11500 * time.Microsecond,
					Rearm: 250 * time.Microsecond, Total: 20491 * time.Microsecond, From: 2 << 30, To: 3 << 30},
			},
			{
				VG: testVG, LV: testLV2, Device: "/dev/mapper/x-z", Size: 1 << 30, MaxSize: 2 << 30, Threshold: 512 << 20,
				High: 600 << 20, State: agent.StateWaiting, Error: "no answer from the SPM", Since: testSince,
			},
		},
		PausedVMs: []resume.Outcome{{Source: "qmp /run/qemu-server/*.qmp", VM: "/run/qemu-server/101.qmp", Action: resume.Left,
			Why:     "still out of space: virtio0 on /dev/x/z (not grown)",
			Waiting: []resume.Drive{{Name: "virtio0", Path: "/dev/x/z"}}}},
		SPM: &spm.Status{
			Domains: []spm.DomainStatus{{
				VG: testVG, Devices: []string{"/dev/loop0"}, Seqno: 42, ExtentBytes: 4 << 20, FreeBytes: 0, ReserveBytes: 1 << 30,
				WaitingOnSpace: []spm.WaitingRequest{{Host: 7, Slot: 3, Volume: testLV2, SizeMiB: 2048, NeedBytes: 1 << 30, Since: testSince}},
				Counters:       spm.Counters{Requests: 5, Extended: 3, AlreadyLarge: 1, WaitedForSpace: 1, LVMCommands: 4},
			}},
			Mailboxes: []spm.MailboxStatus{{Inbox: "/dev/x/inbox", Outbox: "/dev/x/outbox", Domains: []string{testVG},
				Stats: mailbox.SPMStats{EventReads: 10, Requests: 5, Replies: 4}}},
		},
	}
}

// fields is each line's fields, for comparing tables without their padding.
func fields(s string) [][]string {
	var out [][]string
	for line := range strings.Lines(s) {
		out = append(out, strings.Fields(line))
	}
	return out
}

func TestStatusTable(t *testing.T) {
	var b strings.Builder
	if err := printStatus(&b, testStatus()); err != nil {
		t.Fatal(err)
	}
	got := b.String()
	since := testSince.Local().Format(time.RFC3339)
	want := "host 7: 2 LVs watched\n" +
		"VG LV STATE SIZE THRESHOLD HIGHEST MAX EXT LAST ms DETECT REQUEST REFRESH REARM ERROR\n" +
		"3f8e9c3a d772f1c6 armed 3GiB 2560MiB 2621444KiB 11GiB 2 20.49 0.04 8.70 11.50 0.25\n" +
		"3f8e9c3a 8adbc85e waiting 1GiB 512MiB 600MiB 2GiB 0 - - - - - no answer from the SPM\n" +
		"\n" +
		"1 VM paused for want of space:\n" +
		"VM WAITS FOR WHY\n" +
		"/run/qemu-server/101.qmp virtio0 on /dev/x/z still out of space: virtio0 on /dev/x/z (not grown)\n" +
		"\n" +
		"SPM running here, for 1 domain\n" +
		"domain " + testVG + ": free 0B (reserve 1GiB), seqno 42\n" +
		"  requests 5: extended 3, already large 1, refused 0, failed 0, withdrawn 0; waited for space 1; lvm commands 4\n" +
		"  1 request waiting for space:\n" +
		"  HOST VOLUME SIZE NEEDS SINCE\n" +
		"  7 8adbc85e 2GiB 1GiB " + since + "\n"
	if !reflect.DeepEqual(fields(got), fields(want)) {
		t.Errorf("table:\n%s\nwant (padding aside):\n%s", got, want)
	}
	// Columns line up: the state under STATE, the error under ERROR.
	lines := strings.Split(got, "\n")
	for _, c := range []struct {
		head, row1, row2 string
	}{{"STATE", "armed", "waiting"}, {"ERROR", "", "no answer"}} {
		col := strings.Index(lines[1], c.head)
		if !strings.HasPrefix(lines[2][min(col, len(lines[2])):], c.row1) || !strings.HasPrefix(lines[3][col:], c.row2) {
			t.Errorf("%s is not at column %d in its rows:\n%s\n%s\n%s", c.head, col, lines[1], lines[2], lines[3])
		}
	}
	for _, l := range lines {
		if strings.HasSuffix(l, " ") {
			t.Errorf("trailing spaces: %q", l)
		}
	}

	// No LV, no SPM, no error column.
	b.Reset()
	if err := printStatus(&b, agent.Status{HostID: 3}); err != nil {
		t.Fatal(err)
	}
	if b.String() != "host 3: 0 LVs watched\n" {
		t.Errorf("empty status: %q", b.String())
	}
	st := testStatus()
	st.Volumes, st.SPM, st.PausedVMs = st.Volumes[:1], nil, nil
	b.Reset()
	printStatus(&b, st)
	if strings.Contains(b.String(), "ERROR") || strings.Contains(b.String(), "SPM") {
		t.Errorf("status without errors or SPM:\n%s", b.String())
	}
}

func TestStatusCommandNoAgent(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lvwatch.sock")
	stdout, stderr, code := lvwatch(t, "status", "--socket", path)
	if code != 1 || stdout != "" || !strings.Contains(stderr, "no agent running here ("+path+" does not exist)") {
		t.Errorf("status with no agent: exit %d, stdout %q\nstderr:\n%s", code, stdout, stderr)
	}
	if _, stderr, code := lvwatch(t, "status", "--socket", path, "extra"); code != 2 {
		t.Errorf("status with an argument: exit %d, want 2\n%s", code, stderr)
	}
}

func TestStatusCommand(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lvwatch.sock")
	want := testStatus()
	s, err := statusd.Serve(path, func() any { return want }, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	stdout, stderr, code := lvwatch(t, "status", "--socket", path, "--json")
	if code != 0 {
		t.Fatalf("status --json: exit %d\n%s", code, stderr)
	}
	var got agent.Status
	if err := json.Unmarshal([]byte(stdout), &got); err != nil {
		t.Fatalf("status --json: %v\n%s", err, stdout)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("status --json decodes to\n%+v\nwant\n%+v", got, want)
	}

	stdout, stderr, code = lvwatch(t, "status", "--socket", path)
	if code != 0 {
		t.Fatalf("status: exit %d\n%s", code, stderr)
	}
	var table strings.Builder
	printStatus(&table, want)
	if stdout != table.String() {
		t.Errorf("status printed\n%s\nwant\n%s", stdout, table.String())
	}
	for _, s := range []string{agent.StateArmed, agent.StateWaiting, "d772f1c6", "20.49"} {
		if !strings.Contains(stdout, s) {
			t.Errorf("status table lacks %q:\n%s", s, stdout)
		}
	}
}
