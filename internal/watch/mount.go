package watch

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

const (
	bpfFSPath   = "/sys/fs/bpf"
	tracefsPath = "/sys/kernel/tracing"
)

// ensureMounted mounts fstype at path unless a filesystem with that magic is there
// already. systemd mounts both on an ordinary host; minimal machines may not.
func ensureMounted(path, fstype string, magic int64) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err == nil && st.Type == magic {
		return nil
	} else if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("statfs %s: %w", path, err)
	}
	if err := os.MkdirAll(path, 0o755); err != nil {
		return fmt.Errorf("create mount point for %s: %w", fstype, err)
	}
	if err := unix.Mount(fstype, path, fstype, 0, ""); err != nil {
		return fmt.Errorf("mount %s at %s: %w", fstype, path, err)
	}
	return nil
}

// ensureFilesystems makes the BPF filesystem (for pins) and tracefs (for the
// tracepoint's id) available.
func ensureFilesystems() error {
	if err := ensureMounted(bpfFSPath, "bpf", unix.BPF_FS_MAGIC); err != nil {
		return err
	}
	return ensureMounted(tracefsPath, "tracefs", unix.TRACEFS_MAGIC)
}
