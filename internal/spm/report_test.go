package spm

import (
	"errors"
	"io"
	"strings"
	"testing"
)

// What lvm 2.03.16 wrote on LVM_REPORT_FD for a failed lvextend, then a
// `lastlog --select log_type=error` (its trailing comma included), then a success.
const sampleReport = `  {
      "log": [
          {"log_seq_num":"3", "log_type":"status", "log_context":"shell", "log_object_type":"cmd", "log_object_name":"lvextend", "log_object_id":"", "log_object_group":"", "log_object_group_id":"", "log_message":"failure", "log_errno":"0", "log_ret_code":"5"}
      ]
  }
  {
      "log": [
          {"log_seq_num":"1", "log_type":"error", "log_context":"processing", "log_object_type":"vg", "log_object_name":"vgx", "log_object_id":"Tc7TVn-tyJx-TO0f-fIva-EdSc-H2BK-Nc0k97", "log_object_group":"", "log_object_group_id":"", "log_message":"New size given (1 extents) not larger than existing size {4 extents}", "log_errno":"-1", "log_ret_code":"0"},
      ]
  }
  {
      "log": [
          {"log_seq_num":"5", "log_type":"status", "log_context":"shell", "log_object_type":"cmd", "log_object_name":"lvextend", "log_object_id":"", "log_object_group":"", "log_object_group_id":"", "log_message":"success", "log_errno":"0", "log_ret_code":"1"}
      ]
  }
`

func TestReportReader(t *testing.T) {
	rr := newReportReader(strings.NewReader(sampleReport))
	rows, err := rr.next()
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := commandStatus(rows, "lvextend"); ok || err != nil {
		t.Errorf("failed command: ok %v, %v", ok, err)
	}
	if _, err := commandStatus(rows, "vgs"); err == nil {
		t.Error("the status of another command is taken")
	}
	rows, err = rr.next()
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || !strings.HasSuffix(rows[0].Message, "{4 extents}") {
		t.Errorf("lastlog rows %+v", rows)
	}
	if _, err := commandStatus(rows, "lastlog"); err == nil {
		t.Error("a report without a status row has a status")
	}
	rows, err = rr.next()
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := commandStatus(rows, "lvextend"); !ok || err != nil {
		t.Errorf("successful command: ok %v, %v", ok, err)
	}
	if _, err := rr.next(); !errors.Is(err, io.EOF) {
		t.Errorf("after the last object: %v, want EOF", err)
	}
	for _, bad := range []string{`{"log": [`, `x{}`, `{"log": 3}`} {
		if _, err := newReportReader(strings.NewReader(bad)).next(); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestCommandLine(t *testing.T) {
	got, err := commandLine([]string{"lvextend", "--config", `devices/hints="none" global/use_aio=0`, "vg/lv"})
	if want := `lvextend --config 'devices/hints="none" global/use_aio=0' vg/lv`; err != nil || got != want {
		t.Errorf("got %q, %v; want %q", got, err, want)
	}
	for _, bad := range []string{"it's", "two\nlines", ""} {
		if _, err := commandLine([]string{"lvs", bad}); err == nil {
			t.Errorf("%q: passed to the shell", bad)
		}
	}
}

func FuzzReportReader(f *testing.F) {
	f.Add([]byte(sampleReport))
	f.Add([]byte(`{"log":[{"log_message":"a \"}\" b",},]}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		rr := newReportReader(strings.NewReader(string(data)))
		for range 64 {
			rows, err := rr.next()
			if err != nil {
				return
			}
			commandStatus(rows, "lvextend")
		}
	})
}
