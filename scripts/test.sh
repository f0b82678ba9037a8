#!/usr/bin/env bash
# The whole suite, tier by tier, with a closing summary of what ran:
#
#   go     every Go test in the module (unit, crash simulator, backend
#          conformance on memory/file/S3, NBD against real nbdkit, csi-sanity)
#   fuzz   every fuzz target for a fixed number of executions (scripts/fuzz.sh)
#   vm     QEMU guests: kernel NBD, the CSI node service, KubeVirt-style I/O
#   e2e    a real two-node Kubernetes running the driver, then a subset of
#          the upstream Kubernetes storage suite
#
# Every tier runs even when an earlier one failed, so one run shows the whole
# picture; the script exits 1 if any tier failed. TIERS='go fuzz' runs a
# subset. Each tier's closing "N passed, N failed[, N skipped]" line goes
# into the summary table, and the last line is the total over all tiers.
set -uo pipefail
cd "$(dirname "$0")/.."
TIERS=${TIERS:-go fuzz vm e2e}
GO=${GO:-go}
logdir=$(mktemp -d "${TMPDIR:-/tmp}/vb-test.XXXXXX")
summary=()
rcs=0

mkdir -p bin
$GO build -o bin/testreport ./internal/tools/testreport || exit 1

tier() { # NAME COMMAND...
  local name=$1 start rc line
  shift
  echo
  echo "=============== tier $name: $*"
  start=$(date +%s)
  "$@" 2>&1 | tee "$logdir/$name.log"
  rc=${PIPESTATUS[0]}
  line=$(grep -E '^([A-Za-z0-9_-]+: )?[0-9]+ passed, [0-9]+ failed' "$logdir/$name.log" | tail -n 1 |
    sed -E 's/^[A-Za-z0-9_-]+: //')
  if [ -z "$line" ]; then line="no summary line: counted as a failure"; rc=1; fi
  summary+=("$(printf '%-5s %-6s %5ss  %s' "$name" "$([ "$rc" = 0 ] && echo ok || echo FAIL)" "$(( $(date +%s) - start ))" "$line")")
  [ "$rc" = 0 ] || rcs=1
}

go_tier() {
  $GO test -count=1 -timeout 40m -json ./... | bin/testreport -tier go
}

for t in $TIERS; do
  case $t in
    go) tier go go_tier ;;
    fuzz) tier fuzz bash -c './scripts/fuzz.sh selftest && ./scripts/fuzz.sh all' ;;
    vm) tier vm ./test/vm/run.sh ;;
    e2e) tier e2e env VB_E2E_REQUIRE_DRIVER=1 ./test/e2e/run.sh ;;
    *) echo "test.sh: unknown tier $t" >&2; exit 2 ;;
  esac
done

echo
echo "=============== summary (logs in $logdir)"
p=0 f=0 s=0
for l in "${summary[@]}"; do
  echo "$l"
  n=$(grep -Eo '[0-9]+ passed' <<<"$l" | grep -Eo '[0-9]+'); p=$((p + ${n:-0}))
  n=$(grep -Eo '[0-9]+ failed' <<<"$l" | grep -Eo '[0-9]+'); f=$((f + ${n:-0}))
  n=$(grep -Eo '[0-9]+ skipped' <<<"$l" | grep -Eo '[0-9]+'); s=$((s + ${n:-0}))
  if grep -q 'no summary line' <<<"$l"; then f=$((f + 1)); fi
done
# A tier that failed without counting a failure still fails the total.
[ "$rcs" = 0 ] || [ "$f" -gt 0 ] || f=1
echo "total: $p passed, $f failed, $s skipped"
exit $rcs
