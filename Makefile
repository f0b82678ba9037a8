# Viperblock CSI. `make demo` and `make test` set up everything they need.
SHELL := /bin/bash
GO ?= go
export PATH := $(shell $(GO) env GOPATH)/bin:$(PATH)
PKGS := ./...

.PHONY: all build plugin print-ldflags deps test unit check fmt vet staticcheck fuzz sanity vm-test e2e conformance nemesis nemesis-broken preflight bench bench-go bench-flush bench-nbd bench-s3read bench-seal bench-budget bench-space demo stress clean

all: build

deps:
	@./scripts/deps.sh

build: bin/vblock bin/controller bin/node lib/nbdkit-viperblock-plugin.so

# The version the binaries report (GetPluginInfo, --version, vblock
# version, nbdkit --dump-plugin), stamped into package internal/version:
# VERSION=... if given and not empty, else `git describe`, else "dev" (a
# source tree without .git, as in the Dockerfile's build stage); COMMIT and
# BUILD_DATE likewise (BUILD_DATE defaults to SOURCE_DATE_EPOCH when set,
# else the commit's date, else now: the same tree links the same binaries,
# so Go's build cache is not defeated by a clock).
VB_VERSION := $(or $(VERSION),$(shell git describe --tags --always --dirty 2>/dev/null),dev)
VB_COMMIT := $(or $(COMMIT),$(shell git rev-parse HEAD 2>/dev/null))
VB_BUILD_DATE := $(or $(BUILD_DATE),$(shell date -u -d @$${SOURCE_DATE_EPOCH:-$$(git log -1 --format=%ct 2>/dev/null || date +%s)} +%Y-%m-%dT%H:%M:%SZ))
VB_VERSION_PKG := github.com/viperblock/viperblock-csi/internal/version
VB_LDFLAGS := -X $(VB_VERSION_PKG).Version=$(VB_VERSION) -X $(VB_VERSION_PKG).Commit=$(VB_COMMIT) -X $(VB_VERSION_PKG).BuildDate=$(VB_BUILD_DATE)

bin/vblock bin/controller bin/node: FORCE
	@mkdir -p bin
	$(GO) build -ldflags "$(VB_LDFLAGS)" -o $@ ./cmd/$(notdir $@)

lib/nbdkit-viperblock-plugin.so: FORCE
	@mkdir -p lib
	CGO_ENABLED=1 $(GO) build -buildmode=c-shared -ldflags "$(VB_LDFLAGS)" -o lib/nbdkit-viperblock-plugin.so ./cmd/nbdkit-plugin
	@rm -f lib/nbdkit-viperblock-plugin.h

# The -ldflags every binary is built with (cmd/vblock's version test
# builds with them).
print-ldflags:
	@echo '$(VB_LDFLAGS)'

plugin: lib/nbdkit-viperblock-plugin.so

FORCE:

# Test tiers, fastest first:
#   make unit       go test -short: no root, no servers, no `make build` needed
#   make check      the fast gate: gofmt, go vet, staticcheck, unit
#   make test       the whole suite (scripts/test.sh): every Go test, fuzzing,
#                   QEMU guests, a real Kubernetes; ends with a summary per tier
#   make preflight  gofmt, go vet, staticcheck, race-enabled tests
# VB_REQUIRE=all (CI sets it) turns every skip for a missing capability
# (root, /dev/fuse, nbdkit, versitygw, ...) into a failure.
test: deps build
	./scripts/test.sh

unit:
	$(GO) test -count=1 -short $(PKGS)

check: fmt vet staticcheck unit

fmt:
	@echo "== gofmt"; out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt: these files need formatting:"; echo "$$out"; exit 1; fi

vet:
	@echo "== go vet"; $(GO) vet $(PKGS)

# staticcheck at the version scripts/deps.sh pins; failing to install it
# fails the target.
staticcheck:
	@./scripts/deps.sh go-tools
	@echo "== staticcheck"; staticcheck $(PKGS)

# csi-sanity against the real controller and node services: in-process on
# one socket (test/sanity, also in `test`), then the upstream csi-sanity
# command against bin/controller and bin/node as separate processes
# (scripts/sanity-deployed.sh; prints the passed/failed/skipped counts).
sanity: build
	$(GO) test -count=1 -v ./test/sanity
	GO=$(GO) ./scripts/sanity-deployed.sh

# QEMU guests (TCG) on Viperblock volumes: NBD URI, snapshot/clone, kill -9,
# kernel NBD + CSI node service in a guest, pkg/attach's suite in a guest,
# live migration between two QEMU processes on two nbdkit servers.
# The guest is cached in $(VB_VM_CACHE) (default /var/cache/viperblock-vm).
vm-test: deps build
	./test/vm/run.sh

# A real two-node Kubernetes v1.37 (built from the Go module proxy once
# into $(VB_E2E_CACHE), default /var/cache/viperblock-e2e) running the driver
# as shipped: PVCs, snapshots, clones, expansion, node-plugin restarts and
# rollouts, volumes moved between nodes (by hand, by drain, after a
# partition), cleanup; then a fixed subset of the upstream Kubernetes
# External Storage suite (test/e2e/conformance-subset.txt). The driver is
# installed with the Helm chart; `make conformance` installs it with
# kustomize (both render the same objects: TestHelmMatchesKustomize).
e2e: deps build
	VB_E2E_REQUIRE_DRIVER=1 VB_E2E_INSTALL=helm ./test/e2e/run.sh

# The whole upstream External Storage suite for the driver (e2e.test with
# test/e2e/testdriver.yaml) on the two-node cluster; ends with
# "k8s storage suite: N passed, N failed, N skipped". test/e2e/CONFORMANCE.md
# lists what it skips and why. The driver is installed with kustomize.
conformance: deps build
	VB_E2E_REQUIRE_DRIVER=1 VB_E2E_INSTALL=kustomize VB_E2E_SCENARIOS='^$$' VB_E2E_CONFORMANCE=full ./test/e2e/run.sh

# Every fuzz target (discovered, not listed here) for a fixed number of
# executions from scripts/fuzz-budgets, after a self-test that a finding
# fails the run. FUZZ_SCALE=10 fuzzes ten times longer. The seed corpora in
# testdata/fuzz run in every `go test`.
fuzz:
	./scripts/fuzz.sh selftest
	./scripts/fuzz.sh all

# Randomized ownership faults (test/nemesis): three nodes, each its own
# nbdkit, WAL directory and fault proxy in front of versitygw; partitions,
# SIGSTOP beyond the lease, kill -9, moves, forced takeovers, lost nodes;
# a checker of the recorded history. `go test ./...` (and so `make test`)
# runs 2 schedules; this runs NEMESIS_RUNS (about 30 s each).
NEMESIS_RUNS ?= 20
nemesis: deps
	NEMESIS_RUNS=$(NEMESIS_RUNS) $(GO) test -count=1 -timeout $$(( $(NEMESIS_RUNS) * 3 + 10 ))m -v -run TestNemesis ./test/nemesis

# The nemesis must catch a broken engine: the plugin built with the tag
# viperblock_nolease confirms flushes without a valid lease; this target
# passes only if the nemesis fails schedules against it.
nemesis-broken: deps
	./scripts/nemesis-broken.sh

# Long randomized runs: engine crash/reopen cycles, the snapshot/clone
# model, and kill -9 of a real nbdkit.
stress: build
	VB_CRASH_ITERS=5000 $(GO) test -count=1 -timeout 60m -run 'TestCrash|TestModel' -v ./pkg/viperblock/
	VB_NBD_CRASH_ITERS=200 $(GO) test -count=1 -timeout 60m -run TestCrashKill9 ./test/nbd

preflight: fmt vet staticcheck
	@echo "== go test -race"; $(GO) test -race -count=1 -short -timeout 30m $(PKGS)

bench: deps build bench-go bench-flush bench-nbd bench-s3read bench-seal bench-budget bench-space

# Engine benchmarks. The 4 KiB write burst is sized to stay below the drain
# threshold; the replay and S3 benchmarks run a few fixed iterations; a
# million single-block discards (and as many writes) run once.
bench-go:
	$(GO) test -run '^$$' -bench 'Write4KRandom|Write4KFlush|Write1MSeq|Read4K' -benchmem -benchtime 2s ./pkg/viperblock/
	$(GO) test -run '^$$' -bench 'Write4KBurst' -benchmem -benchtime 65536x ./pkg/viperblock/
	$(GO) test -run '^$$' -bench 'Replay1GiB' -benchmem -benchtime 2x ./pkg/viperblock/
	$(GO) test -run '^$$' -bench 'Snapshot|Clone|GCCompaction' -benchtime 20x ./pkg/viperblock/
	$(GO) test -run '^$$' -bench '^BenchmarkS3' -benchtime 5s ./pkg/viperblock/
	$(GO) test -run '^$$' -bench 'Discard1M' -benchtime 1x -timeout 30m ./pkg/viperblock/

# FLUSH latency (4 KiB write + FLUSH, queue depth 1) in each durability
# class, the engine on versitygw over loopback.
bench-flush: deps
	$(GO) test -run '^$$' -bench 'S3Flush' -benchtime 2000x ./pkg/viperblock/

bench-nbd:
	./scripts/bench-nbd.sh

# Cold 4 KiB random reads from versitygw through `vblock serve`, with and
# without the chunk read cache.
bench-s3read: deps build
	./scripts/bench-s3read.sh
# Encryption and compression: fio over NBD on plain, encrypted, compressed
# and encrypted+compressed volumes, and load-dir compression ratios; the
# engine's own comparison is BenchmarkSeal.
bench-seal:
	./scripts/bench-seal.sh

# A node's memory budget at scale: 64 volume servers, each with the node's
# per-volume share, written past their pending limits and read back; prints
# their peak summed Pss against the budget (the go tier runs 6).
bench-budget:
	set -o pipefail; VB_BUDGET_VOLUMES=64 $(GO) test -count=1 -timeout 30m -run '^TestNodeMemoryBudget$$' -v ./test/nbd/ | grep -E 'budget_test|^(---|ok|FAIL|PASS)'

# Store space under 4 GiB of random overwrites of an attached 1 GiB volume
# (with and without a snapshot), against live data; online compaction's
# share of the store traffic.
bench-space:
	./scripts/bench-space.sh

demo: deps build
	./scripts/demo.sh

clean:
	rm -rf bin lib
