#!/usr/bin/env bash
# Shows that the nemesis test (test/nemesis) catches a broken engine: builds
# the plugin with the tag viperblock_nolease (flushes confirmed without a
# valid ownership lease) and runs NEMESIS_RUNS schedules (default 6) of
# pauses and forced takeovers against it. Exits 0 only if schedules fail.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${NEMESIS_RUNS:-6}
so=$(mktemp -d)/nbdkit-viperblock-nolease.so
CGO_ENABLED=1 go build -tags viperblock_nolease -buildmode=c-shared -o "$so" ./cmd/nbdkit-plugin
rm -f "${so%.so}.h"
log=$(mktemp)
set +e
VB_PLUGIN=$so NEMESIS_RUNS=$runs NEMESIS_EVENTS=${NEMESIS_EVENTS:-pause,partition,takeover,move} \
	go test -count=1 -timeout $((runs * 3 + 10))m -v -run TestNemesis ./test/nemesis 2>&1 | tee "$log"
set -e
rm -rf "$(dirname "$so")"
line=$(grep -E '^nemesis: [0-9]+ passed, [0-9]+ failed' "$log" | tail -1)
rm -f "$log"
failed=$(sed -E 's/.* ([0-9]+) failed/\1/' <<<"$line")
if [[ -z "$line" || "$failed" == 0 ]]; then
	echo "nemesis-broken: the nemesis did NOT catch the broken build (${line:-no summary line})" >&2
	exit 1
fi
echo "nemesis-broken: caught: $line"
