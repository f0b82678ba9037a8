# Viperblock CSI. `make demo` and `make test` set up everything they need.
SHELL := /bin/bash
GO ?= go
export PATH := $(shell $(GO) env GOPATH)/bin:$(PATH)
PKGS := ./...
FUZZTIME ?= 10s

.PHONY: all build plugin deps test unit fuzz sanity vm-test e2e preflight bench bench-go bench-nbd demo stress clean

all: build

deps:
	@./scripts/deps.sh

build: bin/vblock bin/controller bin/node lib/nbdkit-viperblock-plugin.so

bin/vblock bin/controller bin/node: FORCE
	@mkdir -p bin
	$(GO) build -o $@ ./cmd/$(notdir $@)

lib/nbdkit-viperblock-plugin.so: FORCE
	@mkdir -p lib
	CGO_ENABLED=1 $(GO) build -buildmode=c-shared -o lib/nbdkit-viperblock-plugin.so ./cmd/nbdkit-plugin
	@rm -f lib/nbdkit-viperblock-plugin.h

plugin: lib/nbdkit-viperblock-plugin.so

FORCE:

# The whole suite: unit tests, short fuzz runs over every decoder, and the
# NBD integration tests against real nbdkit.
test: deps build
	$(GO) test -count=1 -timeout 30m $(PKGS)
	$(MAKE) --no-print-directory fuzz
	$(MAKE) --no-print-directory vm-test
	$(MAKE) --no-print-directory e2e

unit:
	$(GO) test -count=1 -short $(PKGS)

# csi-sanity against the real controller and node services (also in `test`).
sanity: build
	$(GO) test -count=1 -v ./test/sanity

# QEMU guests (TCG) on Viperblock volumes: NBD URI, snapshot/clone, kill -9,
# kernel NBD + CSI node service in a guest, pkg/attach's suite in a guest.
# The guest is cached in $(VB_VM_CACHE) (default /var/cache/viperblock-vm).
vm-test: deps build
	./test/vm/run.sh

# A real single-node Kubernetes v1.37 (built from the Go module proxy once
# into $(VB_E2E_CACHE), default /var/cache/viperblock-e2e) running the driver:
# PVCs, snapshots, clones, expansion, node-plugin restart, cleanup.
e2e: deps build
	VB_E2E_REQUIRE_DRIVER=1 ./test/e2e/run.sh

# Short coverage-guided runs of each fuzz target; the seed corpus lives in
# testdata/fuzz and runs in every `go test`.
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeRecord$$' -fuzztime $(FUZZTIME) ./pkg/viperblock/wal
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeSegmentHeader$$' -fuzztime $(FUZZTIME) ./pkg/viperblock/wal
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeChunk$$' -fuzztime $(FUZZTIME) ./pkg/viperblock/chunk
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeManifest$$' -fuzztime $(FUZZTIME) ./pkg/viperblock/manifest

# Long randomized runs: engine crash/reopen cycles, the snapshot/clone
# model, and kill -9 of a real nbdkit.
stress: build
	VB_CRASH_ITERS=5000 $(GO) test -count=1 -timeout 60m -run 'TestCrash|TestModel' -v ./pkg/viperblock/
	VB_NBD_CRASH_ITERS=200 $(GO) test -count=1 -timeout 60m -run TestCrashKill9 ./test/nbd

preflight: deps
	@echo "== gofmt"; out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "$$out"; exit 1; fi
	@echo "== go vet"; $(GO) vet $(PKGS)
	@echo "== staticcheck"; if command -v staticcheck >/dev/null; then staticcheck $(PKGS); else echo "staticcheck not installed; skipped"; fi
	@echo "== go test -race"; $(GO) test -race -count=1 -short -timeout 30m $(PKGS)

bench: deps build bench-go bench-nbd

# Engine benchmarks. The 4 KiB write burst is sized to stay below the drain
# threshold; the replay and S3 benchmarks run a few fixed iterations.
bench-go:
	$(GO) test -run '^$$' -bench 'Write4KRandom|Write4KFlush|Write1MSeq|Read4K' -benchmem -benchtime 2s ./pkg/viperblock/
	$(GO) test -run '^$$' -bench 'Write4KBurst' -benchmem -benchtime 65536x ./pkg/viperblock/
	$(GO) test -run '^$$' -bench 'Replay1GiB' -benchmem -benchtime 2x ./pkg/viperblock/
	$(GO) test -run '^$$' -bench 'Snapshot|Clone|GCCompaction' -benchtime 20x ./pkg/viperblock/
	$(GO) test -run '^$$' -bench '^BenchmarkS3' -benchtime 5s ./pkg/viperblock/

bench-nbd:
	./scripts/bench-nbd.sh

demo: deps build
	./scripts/demo.sh

clean:
	rm -rf bin lib
