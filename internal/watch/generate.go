package watch

//go:generate go tool bpf2go -target bpfel -type lvw_arm -type lvw_event -type lvw_counters bpf ../../bpf/lvwatch.c -- -I../../bpf/include -O2 -g -mcpu=v3 -Wall -Werror
