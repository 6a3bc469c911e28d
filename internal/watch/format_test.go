package watch

import (
	"strings"
	"testing"
)

// format618 is block_bio_queue's format on Linux 6.18 (rwbs widened to 10).
const format618 = `name: block_bio_queue
ID: 2097
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:unsigned char common_flags;	offset:2;	size:1;	signed:0;
	field:unsigned char common_preempt_count;	offset:3;	size:1;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:dev_t dev;	offset:8;	size:4;	signed:0;
	field:sector_t sector;	offset:16;	size:8;	signed:0;
	field:unsigned int nr_sector;	offset:24;	size:4;	signed:0;
	field:char rwbs[10];	offset:28;	size:10;	signed:0;
	field:char comm[16];	offset:38;	size:16;	signed:0;

print fmt: "%d,%d %s %llu + %u [%s]", ((unsigned int) ((REC->dev) >> 20)), ((unsigned int) ((REC->dev) & ((1U << 20) - 1))), REC->rwbs, (unsigned long long)REC->sector, REC->nr_sector, REC->comm
`

// format61 is the 6.1 record: rwbs[8], comm right after it.
var format61 = strings.NewReplacer("char rwbs[10];\toffset:28;\tsize:10;", "char rwbs[8];\toffset:28;\tsize:8;",
	"offset:38;", "offset:36;").Replace(format618)

func TestFormatLayouts(t *testing.T) {
	for _, tc := range []struct {
		name, text, err string
	}{
		{"6.18", format618, ""},
		{"6.1", format61, ""},
		{"sector moved", strings.Replace(format618, "sector;\toffset:16;", "sector;\toffset:20;", 1), `field "sector" at offset 20, want 16`},
		{"32-bit sector", strings.Replace(format618, "sector;\toffset:16;\tsize:8;", "sector;\toffset:16;\tsize:4;", 1), `field "sector" of 4 bytes, want 8`},
		{"rwbs of 1", strings.Replace(format618, "rwbs[10];\toffset:28;\tsize:10;", "rwbs[1];\toffset:28;\tsize:1;", 1), `field "rwbs" of 1 bytes, want 2`},
		{"no nr_sector", strings.Replace(format618, "nr_sector", "nr_sectors", 1), `no field "nr_sector"`},
		{"garbled size", strings.Replace(format618, "size:8;", "size:eight;", 1), `size "eight" is not a byte count`},
		{"empty", "", "no fields"},
	} {
		fields, err := parseFormat(tc.text)
		if err == nil {
			err = matchLayout(fields)
		}
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%s: error %v, want %q", tc.name, err, tc.err)
		}
	}
}

func FuzzParseFormat(f *testing.F) {
	f.Add(format618)
	f.Add(format61)
	f.Add("field:char x[;offset:-1;size:99999999999999999999;")
	f.Fuzz(func(t *testing.T, text string) {
		fields, err := parseFormat(text)
		if err != nil {
			return
		}
		if len(fields) == 0 {
			t.Fatal("no error and no fields")
		}
		for name, f := range fields {
			if name == "" || strings.ContainsAny(name, " \t[;") || f.Offset < 0 || f.Size < 0 {
				t.Fatalf("field %q %+v from %q", name, f, text)
			}
		}
		matchLayout(fields) // any answer, no panic
	})
}
