package watch

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// tracepointDir is block_bio_queue's directory in tracefs.
var tracepointDir = filepath.Join(tracefsPath, "events/block/block_bio_queue")

// tracepointFormat is the tracefs file that describes block_bio_queue's record.
var tracepointFormat = filepath.Join(tracepointDir, "format")

// tracepointID reads block_bio_queue's id, for a perf event on it.
func tracepointID() (uint64, error) {
	path := filepath.Join(tracepointDir, "id")
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, fmt.Errorf("read the tracepoint's id: %w", err)
	}
	id, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	return id, nil
}

// field is one field of a tracepoint record, as tracefs describes it.
type field struct {
	Offset, Size int
}

// recordLayout is the prefix of the block_bio_queue record that lvw_bio_rec in
// bpf/lvwatch.c reads. rwbs needs only its first two bytes (the operation and
// a possible preflush flag), so any width from 2 up fits.
var recordLayout = []struct {
	name    string
	offset  int
	size    int
	minSize bool // size is a lower bound
}{
	{"dev", 8, 4, false},
	{"sector", 16, 8, false},
	{"nr_sector", 24, 4, false},
	{"rwbs", 28, 2, true},
}

// checkTracepointFormat refuses to run on a kernel whose block_bio_queue record
// differs from what the program reads: it would watch garbage, or nothing.
func checkTracepointFormat() error {
	text, err := os.ReadFile(tracepointFormat)
	if err != nil {
		return fmt.Errorf("read the tracepoint's format: %w", err)
	}
	fields, err := parseFormat(string(text))
	if err != nil {
		return fmt.Errorf("%s: %w", tracepointFormat, err)
	}
	if err := matchLayout(fields); err != nil {
		return fmt.Errorf("this kernel's block:block_bio_queue record is not the one lvwatch reads (%s): %w", tracepointFormat, err)
	}
	return nil
}

func matchLayout(fields map[string]field) error {
	for _, want := range recordLayout {
		got, ok := fields[want.name]
		switch {
		case !ok:
			return fmt.Errorf("no field %q", want.name)
		case got.Offset != want.offset:
			return fmt.Errorf("field %q at offset %d, want %d", want.name, got.Offset, want.offset)
		case want.minSize && got.Size < want.size, !want.minSize && got.Size != want.size:
			return fmt.Errorf("field %q of %d bytes, want %d", want.name, got.Size, want.size)
		}
	}
	return nil
}

// parseFormat reads the fields of a tracefs format file: lines such as
//
//	field:sector_t sector;	offset:16;	size:8;	signed:0;
//
// keyed by the field's name (without an array suffix).
func parseFormat(text string) (map[string]field, error) {
	fields := map[string]field{}
	for n, line := range strings.Split(text, "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "field:") {
			continue
		}
		name, f, err := parseField(line)
		if err != nil {
			return nil, fmt.Errorf("line %d: %w", n+1, err)
		}
		fields[name] = f
	}
	if len(fields) == 0 {
		return nil, fmt.Errorf("no fields")
	}
	return fields, nil
}

func parseField(line string) (string, field, error) {
	var name string
	f := field{Offset: -1, Size: -1}
	for part := range strings.SplitSeq(line, ";") {
		key, value, ok := strings.Cut(strings.TrimSpace(part), ":")
		if !ok {
			continue
		}
		switch key {
		case "field":
			// "char rwbs[10]": the name is the last word, less any array suffix.
			words := strings.Fields(value)
			if len(words) < 2 {
				return "", field{}, fmt.Errorf("field declaration %q has no name", value)
			}
			name, _, _ = strings.Cut(words[len(words)-1], "[")
		case "offset", "size":
			v, err := strconv.Atoi(value)
			if err != nil || v < 0 {
				return "", field{}, fmt.Errorf("%s %q is not a byte count", key, value)
			}
			if key == "offset" {
				f.Offset = v
			} else {
				f.Size = v
			}
		}
	}
	if name == "" || f.Offset < 0 || f.Size < 0 {
		return "", field{}, fmt.Errorf("incomplete field %q", line)
	}
	return name, f, nil
}
