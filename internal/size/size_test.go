package size

import "testing"

func TestParse(t *testing.T) {
	for in, want := range map[string]uint64{
		"4096": 4096, "32MiB": 32 << 20, "1GiB": 1 << 30, "1g": 1 << 30, "1.5G": 3 << 29,
		"512 KiB": 512 << 10, "7B": 7, "2TiB": 2 << 40, "16M": 16 << 20,
	} {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "MiB", "-1", "x", "1.2.3G", "99999999999TiB", "NaN"} {
		if got, err := Parse(in); err == nil {
			t.Errorf("Parse(%q) = %d, want an error", in, got)
		}
	}
}

func TestFormatRoundTrip(t *testing.T) {
	for _, n := range []uint64{0, 1, 4095, 4096, 32 << 20, 3 << 29, 1 << 40, 5<<30 + 1} {
		got, err := Parse(Format(n))
		if err != nil || got != n {
			t.Errorf("Parse(Format(%d)=%q) = %d, %v", n, Format(n), got, err)
		}
	}
	if s := Format(32 << 20); s != "32MiB" {
		t.Errorf("Format(32MiB) = %q", s)
	}
}

func FuzzParse(f *testing.F) {
	for _, s := range []string{"1GiB", "4096", "1.5G", " 3 KiB ", "1e3M"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := Parse(s)
		if err != nil {
			return
		}
		if back, err := Parse(Format(n)); err != nil || back != n {
			t.Fatalf("Parse(%q)=%d but Format round trip gives %d, %v", s, n, back, err)
		}
	})
}
