package spm

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// logRow is one row of lvm's command log report (log/command_log_cols of the
// lvmdbusd command profile), all values strings as lvm prints them.
type logRow struct {
	Type       string `json:"log_type"`
	Context    string `json:"log_context"`
	ObjectType string `json:"log_object_type"`
	ObjectName string `json:"log_object_name"`
	Message    string `json:"log_message"`
	RetCode    string `json:"log_ret_code"`
}

// maxReportSize bounds one report object: a command log is a few rows, and
// a broken lvm must not make the SPM buffer without end.
const maxReportSize = 1 << 20

// reportReader splits the stream lvm writes on LVM_REPORT_FD into its JSON
// objects, one per command, and decodes their command log.
type reportReader struct {
	r *bufio.Reader
}

func newReportReader(r io.Reader) *reportReader { return &reportReader{r: bufio.NewReader(r)} }

// next returns the log rows of the next report object.
func (rr *reportReader) next() ([]logRow, error) {
	obj, err := rr.object()
	if err != nil {
		return nil, err
	}
	return decodeReport(obj)
}

// object reads one top-level {...} object, tracking strings so that braces in
// messages do not count.
func (rr *reportReader) object() ([]byte, error) {
	var buf []byte
	var sc jsonStrings
	depth := 0
	for {
		c, err := rr.r.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) && len(bytes.TrimSpace(buf)) > 0 {
				err = io.ErrUnexpectedEOF
			}
			return nil, err
		}
		if depth == 0 && c != '{' {
			if !isJSONSpace(c) {
				return nil, fmt.Errorf("lvm report: unexpected byte %q between objects", c)
			}
			continue
		}
		buf = append(buf, c)
		if len(buf) > maxReportSize {
			return nil, fmt.Errorf("lvm report: object longer than %d bytes", maxReportSize)
		}
		switch {
		case sc.inside(c):
		case c == '{':
			depth++
		case c == '}':
			depth--
			if depth == 0 {
				return buf, nil
			}
		}
	}
}

// jsonStrings follows JSON strings byte by byte.
type jsonStrings struct{ in, escaped bool }

// inside reports whether c is part of a string, quotes included.
func (s *jsonStrings) inside(c byte) bool {
	switch {
	case s.in && s.escaped:
		s.escaped = false
	case s.in && c == '\\':
		s.escaped = true
	case c == '"':
		s.in = !s.in
	case !s.in:
		return false
	}
	return true
}

func isJSONSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' }

// decodeReport decodes one report object. lvm leaves a comma after the last
// row when a selection drops the rows after it; those are removed first.
func decodeReport(obj []byte) ([]logRow, error) {
	var rep struct {
		Log []logRow `json:"log"`
	}
	if err := json.Unmarshal(dropTrailingCommas(obj), &rep); err != nil {
		return nil, fmt.Errorf("lvm report: %w", err)
	}
	return rep.Log, nil
}

// dropTrailingCommas removes each comma, outside strings, that only white space
// separates from a closing bracket or brace.
func dropTrailingCommas(b []byte) []byte {
	out := make([]byte, 0, len(b))
	var sc jsonStrings
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case sc.inside(c):
		case c == ',':
			j := i + 1
			for j < len(b) && isJSONSpace(b[j]) {
				j++
			}
			if j < len(b) && (b[j] == ']' || b[j] == '}') {
				continue
			}
		}
		out = append(out, c)
	}
	return out
}

// commandStatus finds the shell's status row of a command's report: lvm's
// return code, 1 (ECMD_PROCESSED) on success. The row must name the command sent
// (name, its first word): another name means the shell and the SPM are out of
// step, a protocol error.
func commandStatus(rows []logRow, name string) (ok bool, err error) {
	for _, r := range rows {
		if r.Context == "shell" && r.ObjectType == "cmd" && r.Type == "status" {
			if r.ObjectName != name {
				return false, fmt.Errorf("lvm report: status of %q for the command %q", r.ObjectName, name)
			}
			return r.RetCode == "1", nil
		}
	}
	return false, errors.New("lvm report: no status row for the command")
}
