// Package size parses and formats byte sizes such as "32MiB", "1GiB" or "4096".
package size

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

// Binary units; decimal suffixes (KB, MB, ...) are accepted as their binary twins
// because block devices and LVM are sized in powers of two.
var units = []struct {
	suffix string
	mult   uint64
}{
	{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10},
	{"TB", 1 << 40}, {"GB", 1 << 30}, {"MB", 1 << 20}, {"KB", 1 << 10},
	{"T", 1 << 40}, {"G", 1 << 30}, {"M", 1 << 20}, {"K", 1 << 10},
	{"B", 1},
}

// Parse turns "32MiB", "1GiB", "1.5G" or a plain byte count into bytes.
func Parse(s string) (uint64, error) {
	str := strings.TrimSpace(s)
	mult := uint64(1)
	for _, u := range units {
		if strings.HasSuffix(strings.ToUpper(str), strings.ToUpper(u.suffix)) {
			str = strings.TrimSpace(str[:len(str)-len(u.suffix)])
			mult = u.mult
			break
		}
	}
	if str == "" {
		return 0, fmt.Errorf("size %q: no number", s)
	}
	if n, err := strconv.ParseUint(str, 10, 64); err == nil {
		if n > math.MaxUint64/mult {
			return 0, fmt.Errorf("size %q: overflows 64 bits", s)
		}
		return n * mult, nil
	}
	f, err := strconv.ParseFloat(str, 64)
	if err != nil || f < 0 || math.IsNaN(f) {
		return 0, fmt.Errorf("size %q: not a non-negative number with an optional unit (KiB, MiB, GiB, TiB)", s)
	}
	bytes := f * float64(mult)
	if bytes >= math.MaxUint64 {
		return 0, fmt.Errorf("size %q: overflows 64 bits", s)
	}
	return uint64(bytes), nil
}

// Format renders bytes with the largest binary unit that divides it exactly,
// so that Parse(Format(n)) == n.
func Format(n uint64) string {
	for _, u := range units[:4] {
		if n >= u.mult && n%u.mult == 0 {
			return strconv.FormatUint(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatUint(n, 10) + "B"
}
