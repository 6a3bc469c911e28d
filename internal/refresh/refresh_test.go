package refresh

import (
	"testing"

	"github.com/lvwatch/lvwatch/internal/dm"
)

func target(start, length uint64, typ, params string) dm.Target {
	return dm.Target{Start: start, Length: length, Type: typ, Params: params}
}

func TestSameTable(t *testing.T) {
	live := []dm.Target{target(0, 2048, "linear", "7:0 2048"), target(2048, 2048, "linear", "7:1 2048")}
	for _, tc := range []struct {
		name string
		want []dm.Target
		same bool
	}{
		{"equal", []dm.Target{target(0, 2048, "linear", "7:0 2048"), target(2048, 2048, "linear", "7:1 2048")}, true},
		{"spacing", []dm.Target{target(0, 2048, "linear", " 7:0  2048"), target(2048, 2048, "linear", "7:1 2048 ")}, true},
		{"grown", []dm.Target{target(0, 2048, "linear", "7:0 2048"), target(2048, 4096, "linear", "7:1 2048")}, false},
		{"one more segment", append(live[:2:2], target(4096, 8, "linear", "7:1 9000")), false},
		{"moved", []dm.Target{target(0, 2048, "linear", "7:0 2048"), target(2048, 2048, "linear", "7:2 2048")}, false},
		{"other type", []dm.Target{target(0, 2048, "linear", "7:0 2048"), target(2048, 2048, "striped", "7:1 2048")}, false},
	} {
		if got := sameTable(live, tc.want); got != tc.same {
			t.Errorf("%s: sameTable = %v, want %v", tc.name, got, tc.same)
		}
	}
}

func TestExtends(t *testing.T) {
	live := []dm.Target{target(0, 2048, "linear", "7:0 2048"), target(2048, 2048, "striped", "2 128 7:1 2048 7:2 2048")}
	for _, tc := range []struct {
		name    string
		want    []dm.Target
		extends bool
	}{
		{"same", live, true},
		{"last target longer", []dm.Target{live[0], target(2048, 4096, "striped", "2 128 7:1 2048 7:2 2048")}, true},
		{"one more target", append(live[:2:2], target(4096, 8, "linear", "7:1 9000")), true},
		{"first target longer", []dm.Target{target(0, 4096, "linear", "7:0 2048"), target(4096, 2048, "striped", "2 128 7:1 2048 7:2 2048")}, false},
		{"moved", []dm.Target{live[0], target(2048, 4096, "striped", "2 128 7:1 2048 7:3 2048")}, false},
		{"last target shorter", []dm.Target{live[0], target(2048, 1024, "striped", "2 128 7:1 2048 7:2 2048")}, false},
		{"fewer targets", live[:1], false},
		{"nothing live", nil, false},
	} {
		if got := extends(live, tc.want); got != tc.extends {
			t.Errorf("%s: extends = %v, want %v", tc.name, got, tc.extends)
		}
	}
	if extends(nil, live) {
		t.Error("a table extends an empty one")
	}
}
