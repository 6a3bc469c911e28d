package testvm

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestModuleClosure(t *testing.T) {
	k := Kernel{Release: "6.1.0-test", Root: t.TempDir()}
	os.MkdirAll(k.modulesDir(), 0o755)
	dep := "kernel/drivers/md/dm-mod.ko:\n" +
		"kernel/drivers/md/dm-thin-pool.ko: kernel/drivers/md/persistent-data/dm-persistent-data.ko kernel/drivers/md/dm-mod.ko\n" +
		"kernel/drivers/block/loop.ko:\n"
	if err := os.WriteFile(filepath.Join(k.modulesDir(), "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := k.moduleClosure([]string{"dm_thin_pool", "dm-mod"})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"kernel/drivers/md/dm-mod.ko", "kernel/drivers/md/dm-thin-pool.ko", "kernel/drivers/md/persistent-data/dm-persistent-data.ko"}
	if !slices.Equal(got, want) {
		t.Errorf("closure %q, want %q", got, want)
	}
	if _, err := k.moduleClosure([]string{"no_such_module"}); err == nil {
		t.Error("a missing module did not fail")
	}
}
