#!/usr/bin/env bash
# Shows that the nemesis test (test/nemesis) catches a broken engine. Two
# deliberately broken plugin builds, each run for NEMESIS_RUNS schedules
# (default 6):
#   viperblock_nolease    flushes confirmed without a valid ownership lease
#                         (pauses and forced takeovers: invariant 1)
#   viperblock_nostorelog durability=store flushes confirmed without the
#                         store log (lost nodes: invariant 3)
# Exits 0 only if the nemesis fails schedules against each of them.
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${NEMESIS_RUNS:-6}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
status=0
check() { # tag durability events
	local tag=$1 durability=$2 events=$3 so=$tmp/$1.so log=$tmp/$1.log
	CGO_ENABLED=1 go build -tags "$tag" -buildmode=c-shared -o "$so" ./cmd/nbdkit-plugin
	set +e
	VB_PLUGIN=$so NEMESIS_RUNS=$runs NEMESIS_DURABILITY=$durability NEMESIS_EVENTS=$events \
		go test -count=1 -timeout $((runs * 3 + 10))m -v -run TestNemesis ./test/nemesis 2>&1 | tee "$log"
	set -e
	local line failed
	line=$(grep -E '^nemesis: [0-9]+ passed, [0-9]+ failed' "$log" | tail -1 || true)
	failed=$(sed -E 's/.* ([0-9]+) failed/\1/' <<<"$line")
	if [[ -z "$line" || "$failed" == 0 ]]; then
		echo "nemesis-broken: $tag was NOT caught (${line:-no summary line})" >&2
		status=1
	else
		echo "nemesis-broken: $tag caught: $line"
	fi
}
check viperblock_nolease node pause,partition,takeover,move
check viperblock_nostorelog store lose,crash,move
exit $status
