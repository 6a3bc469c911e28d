# lvwatch: `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
BIN := bin/lvwatch
# The pinned BPF toolchain; bpf2go's output is committed and byte-identical run to run.
export BPF2GO_CC ?= clang-19
export BPF2GO_STRIP ?= llvm-strip-19
FUZZTIME ?= 30s

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-16s %s\n", $$1, $$2}'

.PHONY: deps
deps: ## Install the Debian packages the build, tests and demo need (only missing ones)
	@tools/deps.sh

.PHONY: build
build: ## Build bin/lvwatch
	CGO_ENABLED=0 $(GO) build -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/lvwatch

.PHONY: generate
generate: deps ## Rebuild the BPF objects with the pinned clang (bpf2go)
	$(GO) generate ./...

.PHONY: check-generate
check-generate: generate ## Fail if the committed generated files differ from a fresh build
	@git diff --exit-code --stat -- '*_bpfel.go' '*_bpfel.o' || \
		{ echo "generated BPF files differ from the committed ones: run 'make generate' and commit" >&2; exit 1; }

.PHONY: demo
demo: deps ## Show lvwatch growing a thin LV live while qemu-img writes onto it (in the QEMU guest)
	$(GO) run ./tools/vmtest -script tools/scenarios/qemu-img.sh

.PHONY: demo-watch
demo-watch: deps build ## Show the watcher alone on a loop device with the embedded default (root)
	$(BIN) demo

.PHONY: test
test: deps ## Run all tests: unit, privileged (root) and the device-mapper tests in a VM
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); [ -z "$$unformatted" ] || { echo "gofmt needed: $$unformatted" >&2; exit 1; }
	$(GO) vet ./...
	$(GO) test -count=1 ./...
	$(MAKE) vmtest
	$(MAKE) scenarios

.PHONY: vmtest
vmtest: deps ## Run the device-mapper tests in a QEMU guest (directly when the host has device-mapper)
	$(GO) run ./tools/vmtest -timeout 15m

.PHONY: scenarios
scenarios: deps ## Run the end-to-end scenarios in the QEMU guest (tools/scenarios: real qemu-img, LVM2, dm, BPF; a "# vmtest: FLAGS" line adds vmtest flags)
	@for s in tools/scenarios/*.sh; do echo "scenario $$s"; $(GO) run ./tools/vmtest $$(sed -n "s/^# vmtest: //p" $$s) -script $$s || exit 1; done

.PHONY: bench
bench: deps ## Run the benchmarks (root) and print their figures
	$(GO) test -run '^$$' -bench . -benchtime 10000x ./internal/watch
	$(GO) test -run '^$$' -bench . -benchtime 300x ./internal/lvm
	$(GO) test -run '^$$' -bench . -benchtime 300x ./internal/mailbox
	$(GO) test -run '^$$' -bench . -benchtime 200x ./internal/spm
	$(GO) test -run '^$$' -bench . -benchtime 10x ./internal/resume
	$(GO) run ./tools/vmtest -run '^$$' -bench -benchtime 50x

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME each (default 30s)
	@tools/fuzz.sh $(FUZZTIME)

.PHONY: clean
clean: ## Remove build outputs and caches
	rm -rf bin .cache
