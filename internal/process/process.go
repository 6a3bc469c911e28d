// Package process tells whether a process recorded earlier still runs, across pid
// reuse: a pid with the start time (from /proc/PID/stat) it had when recorded.
package process

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"syscall"
)

// Alive reports whether process pid runs and, when start is not 0, is the one that
// started then (not a later process given the same pid).
func Alive(pid int, start uint64) bool {
	got, err := StartTime(pid)
	return err == nil && (start == 0 || got == start)
}

// Exited reports whether process pid has ended: no such process, or one that is
// dead and waits only to be reaped (a zombie: its parent's to reap, not ours).
func Exited(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ESRCH)
	}
	state, err := ParseState(b)
	return err == nil && (state == 'Z' || state == 'X')
}

// ParseState returns field 3, the state (R, S, D, Z, ...), of a /proc/PID/stat line.
func ParseState(stat []byte) (byte, error) {
	fields, err := afterComm(stat)
	if err != nil {
		return 0, err
	}
	if len(fields) == 0 || len(fields[0]) != 1 {
		return 0, errors.New("proc stat: no state")
	}
	return fields[0][0], nil
}

// afterComm returns the fields after the command name, field 2, which is in
// parentheses and may hold any byte: they start after its last ')'.
func afterComm(stat []byte) ([][]byte, error) {
	end := bytes.LastIndexByte(stat, ')')
	if end < 0 {
		return nil, errors.New("proc stat: no command name")
	}
	return bytes.Fields(stat[end+1:]), nil
}

// StartTime returns process pid's start time, in clock ticks since boot.
func StartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	return ParseStartTime(b)
}

// ParseStartTime returns field 22, starttime, of a /proc/PID/stat line.
func ParseStartTime(stat []byte) (uint64, error) {
	fields, err := afterComm(stat)
	if err != nil {
		return 0, err
	}
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
