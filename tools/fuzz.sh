#!/usr/bin/env bash
# Runs every Go fuzz target in the module for the given time each (Go fuzzes one
# target at a time), then keeps up to KEEP of the inputs the fuzzer found
# interesting in the package's testdata/fuzz/<target>/, so the corpus is committed
# and every later `go test` replays it.
set -euo pipefail
fuzztime=${1:-30s}
keep=${KEEP:-40}
cache=$(go env GOCACHE)/fuzz
for pkg in $(go list ./...); do
	dir=$(go list -f '{{.Dir}}' "$pkg")
	for target in $(go test -list '^Fuzz' "$pkg" | grep '^Fuzz' || true); do
		echo "== $pkg $target"
		go test -run '^$' -fuzz "^${target}\$" -fuzztime "$fuzztime" "$pkg"
		found="$cache/$pkg/$target"
		[ -d "$found" ] || continue
		mkdir -p "$dir/testdata/fuzz/$target"
		have=$(find "$dir/testdata/fuzz/$target" -type f | wc -l)
		find "$found" -type f -size -4k | sort | head -n $((keep > have ? keep - have : 0)) |
			xargs -r cp -n -t "$dir/testdata/fuzz/$target/"
	done
done
