// Package intent records, crash-safely, the table swaps a process has under
// way, so that the next process can finish those a crash cut short: a device
// left suspended holds its VM's I/O until someone resumes it.
//
// A record is a file named after the device's dm uuid, written to a temporary
// name, synced and renamed into place, so that it is there whole or not at
// all. It names its owner by pid and start time: a record whose owner is
// alive is a swap in progress, not an orphan.
package intent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/lvwatch/lvwatch/internal/process"
)

// Record is one swap under way.
type Record struct {
	UUID  string    `json:"dm_uuid"`
	VG    string    `json:"vg"`
	LV    string    `json:"lv"`
	PID   int       `json:"pid"`
	Start uint64    `json:"pid_start"` // the owner's start time, clock ticks after boot
	Time  time.Time `json:"time"`
}

// Dir is a directory of records, normally under /run: a reboot, which
// clears device-mapper too, clears it.
type Dir struct {
	path  string
	pid   int
	start uint64
}

const suffix = ".json"

// Open opens the record directory at path, creating it.
func Open(path string) (*Dir, error) {
	if err := os.MkdirAll(path, 0o700); err != nil {
		return nil, fmt.Errorf("intent records: %w", err)
	}
	pid := os.Getpid()
	start, err := process.StartTime(pid)
	if err != nil {
		return nil, fmt.Errorf("intent records: %w", err)
	}
	return &Dir{path: path, pid: pid, start: start}, nil
}

// Begin records that this process starts swapping the table of the device
// with dm uuid uuid (LV lv of VG vg). It returns once the record is on disk.
func (d *Dir) Begin(uuid, vg, lv string) error {
	if err := checkUUID(uuid); err != nil {
		return err
	}
	b, err := json.Marshal(Record{UUID: uuid, VG: vg, LV: lv, PID: d.pid, Start: d.start, Time: time.Now().UTC()})
	if err != nil {
		return err
	}
	tmp := filepath.Join(d.path, fmt.Sprintf(".%s.%d.tmp", uuid, d.pid))
	if err := writeSynced(tmp, b); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("intent record for %s: %w", uuid, err)
	}
	if err := os.Rename(tmp, filepath.Join(d.path, uuid+suffix)); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("intent record for %s: %w", uuid, err)
	}
	return d.syncDir()
}

// Done removes the record of uuid: its swap is over, the device running.
func (d *Dir) Done(uuid string) error {
	if err := os.Remove(filepath.Join(d.path, uuid+suffix)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("intent record for %s: %w", uuid, err)
	}
	return d.syncDir()
}

// Orphans returns the records whose owner has died, and removes the
// temporary files dead owners left. A record that does not decode is an
// error, and stays.
func (d *Dir) Orphans() ([]Record, error) {
	ents, err := os.ReadDir(d.path)
	if err != nil {
		return nil, fmt.Errorf("intent records: %w", err)
	}
	var out []Record
	var errs []error
	for _, e := range ents {
		name := e.Name()
		path := filepath.Join(d.path, name)
		if strings.HasPrefix(name, ".") && strings.HasSuffix(name, ".tmp") {
			parts := strings.Split(name, ".")
			if pid, err := strconv.Atoi(parts[len(parts)-2]); err == nil && !process.Alive(pid, 0) {
				os.Remove(path)
			}
			continue
		}
		uuid, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		b, err := os.ReadFile(path)
		if err != nil {
			errs = append(errs, fmt.Errorf("intent record %s: %w", path, err))
			continue
		}
		r, err := Decode(b, uuid)
		if err != nil {
			errs = append(errs, fmt.Errorf("intent record %s: %w", path, err))
			continue
		}
		if !process.Alive(r.PID, r.Start) {
			out = append(out, r)
		}
	}
	return out, errors.Join(errs...)
}

// Decode checks and decodes a record stored under the dm uuid uuid.
func Decode(b []byte, uuid string) (Record, error) {
	var r Record
	if err := json.Unmarshal(b, &r); err != nil {
		return Record{}, err
	}
	switch {
	case r.UUID != uuid:
		return Record{}, fmt.Errorf("record names device %q", r.UUID)
	case checkUUID(r.UUID) != nil:
		return Record{}, checkUUID(r.UUID)
	case r.VG == "" || r.LV == "" || strings.ContainsAny(r.VG+r.LV, "/\x00"):
		return Record{}, fmt.Errorf("record names LV %q/%q", r.VG, r.LV)
	case r.PID <= 0:
		return Record{}, fmt.Errorf("record names pid %d", r.PID)
	}
	return r, nil
}

// checkUUID keeps a dm uuid usable as a file name.
func checkUUID(uuid string) error {
	if uuid == "" || len(uuid) > 128 || strings.ContainsAny(uuid, "/\x00") || uuid[0] == '.' {
		return fmt.Errorf("dm uuid %q cannot name a record", uuid)
	}
	return nil
}

func writeSynced(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	_, err = f.Write(b)
	if err == nil {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

func (d *Dir) syncDir() error {
	f, err := os.Open(d.path)
	if err != nil {
		return fmt.Errorf("intent records: %w", err)
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("intent records: sync %s: %w", d.path, err)
	}
	return nil
}
