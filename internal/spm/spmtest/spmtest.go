// Package spmtest helps tests run the SPM on lvmtest's isolated LVM2.
package spmtest

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/lvwatch/lvwatch/internal/lvm/lvmtest"
)

// lvmdbusdProfile is the command profile lvm2 ships, which the SPM's lvm shell
// reports through.
const lvmdbusdProfile = "/etc/lvm/profile/lvmdbusd.profile"

// Use gives env's LVM the command profile the SPM needs and points this
// process's (and its children's) LVM_SYSTEM_DIR at env.
func Use(t testing.TB, env *lvmtest.Env) {
	t.Helper()
	prof, err := os.ReadFile(lvmdbusdProfile)
	if err != nil {
		t.Fatalf("lvm2's command profile: %v", err)
	}
	dir := filepath.Join(env.Dir, "profile")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, filepath.Base(lvmdbusdProfile)), prof, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Setenv("LVM_SYSTEM_DIR", env.Dir)
}
