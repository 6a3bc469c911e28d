#!/usr/bin/env bash
# Runs every Go fuzz target in the module for the given time each (Go fuzzes one target at a time).
set -euo pipefail
fuzztime=${1:-30s}
for pkg in $(go list ./...); do
	for target in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		echo "== $pkg $target"
		go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg"
	done
done
