// Package process tells whether a process recorded earlier still runs, across pid
// reuse: a pid with the start time (from /proc/PID/stat) it had when recorded.
package process

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
)

// Alive reports whether process pid runs and, when start is not 0, is the one that
// started then (not a later process given the same pid).
func Alive(pid int, start uint64) bool {
	got, err := StartTime(pid)
	return err == nil && (start == 0 || got == start)
}

// StartTime returns process pid's start time, in clock ticks since boot.
func StartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return ParseStartTime(b)
}

// ParseStartTime returns field 22, starttime, of a /proc/PID/stat line. The command
// name, field 2, is in parentheses and may hold any byte: the fields after it start
// after its last ')'.
func ParseStartTime(stat []byte) (uint64, error) {
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return 0, errors.New("proc stat: no command name")
	}
	fields := bytes.Fields(stat[end+1:])
	const startField = 22 - 3 // fields[0] is field 3, the state
	if len(fields) <= startField {
		return 0, fmt.Errorf("proc stat: %d fields after the command name", len(fields))
	}
	n, err := strconv.ParseUint(string(fields[startField]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("proc stat: starttime: %w", err)
	}
	return n, nil
}
