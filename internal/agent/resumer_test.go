package agent

import (
	"testing"

	"github.com/lvwatch/lvwatch/internal/resume"
)

func TestStale(t *testing.T) {
	const src = "qmp /run/qemu-server/*.qmp"
	old := resume.Outcome{Source: src, VM: "/run/qemu-server/101.qmp", Action: resume.Left, Waiting: []resume.Drive{{Name: "virtio0"}}}
	other := resume.Outcome{Source: src, VM: "/run/qemu-server/102.qmp", Action: resume.Unaffected}
	for _, tc := range []struct {
		name     string
		outcomes []resume.Outcome
		want     bool
	}{
		{"looked at again", []resume.Outcome{other, {Source: src, VM: old.VM, Action: resume.Resumed}}, true},
		{"looked at for another device", []resume.Outcome{{Source: src, VM: old.VM, Action: resume.Unaffected}}, false},
		{"could not be asked", []resume.Outcome{{Source: src, VM: old.VM, Action: resume.Failed}}, false},
		{"its source could not list", []resume.Outcome{{Source: src, Action: resume.Failed}}, false},
		{"gone", []resume.Outcome{other}, true},
		{"gone, and no VM left", nil, true},
		{"another source's", []resume.Outcome{{Source: "libvirt (this host's)", VM: old.VM, Action: resume.Resumed}, other}, true},
	} {
		if got := stale(old, tc.outcomes); got != tc.want {
			t.Errorf("%s: stale = %v, want %v", tc.name, got, tc.want)
		}
	}
}
