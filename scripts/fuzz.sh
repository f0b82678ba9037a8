#!/usr/bin/env bash
# Runs every fuzz target in the module for a fixed number of executions.
#
# Budgets are counts (-fuzztime Nx), never durations: a duration makes Go's
# fuzz coordinator race its own deadline at the end of a run on a loaded
# machine and fail with a bare "context deadline exceeded" (golang/go#75804,
# fixed in Go 1.27). A count has no deadline, so a slow machine only makes a
# run take longer.
#
# Targets are discovered from the test files (every `func FuzzX(f *testing.F)`),
# so a new target is fuzzed without touching this script. Each target's
# budget is in scripts/fuzz-budgets (sized so a target takes about 10 s on
# the project's 2-core machines); a target missing there gets
# FUZZ_DEFAULT_EXECS. FUZZ_SCALE multiplies every budget (0.1 for a quick
# pass, 10 for a long one). FUZZ_TARGETS='FuzzA FuzzB' limits the run.
#
# A finding fails the run: go test writes the failing input under the
# package's testdata/fuzz/<Target>/ (commit it: every later `go test` runs it
# as a regression case) and exits non-zero. Ends with
# "fuzz: N passed, N failed".
#
#   scripts/fuzz.sh            every target
#   scripts/fuzz.sh selftest   prove that a finding fails this script
set -uo pipefail
self=$(realpath "$0")
[ "${1:-}" = run-here ] || cd "$(dirname "$0")/.."
GO=${GO:-go}
FUZZ_DEFAULT_EXECS=${FUZZ_DEFAULT_EXECS:-100000}
FUZZ_SCALE=${FUZZ_SCALE:-1}

# targets prints "DIR NAME" for each fuzz target in the module.
targets() {
  grep -rEo --include='*_test.go' --exclude-dir=.git --exclude-dir=vendor \
    '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' "${1:-.}" |
    sed -E 's#^(.*)/[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]*)\(.*#\1 \2#' | sort -u
}

budget() { # NAME
  local n
  n=$(awk -v t="$1" '$1 == t { print $2 }' scripts/fuzz-budgets 2>/dev/null)
  n=${n:-$FUZZ_DEFAULT_EXECS}
  awk -v n="$n" -v s="$FUZZ_SCALE" 'BEGIN { v = int(n * s); if (v < 1) v = 1; print v }'
}

run_all() {
  local passed=0 failed=0 failures=() dir name n start rc
  local list
  list=$(targets .)
  if [ -z "$list" ]; then
    echo "fuzz: no fuzz targets found" >&2
    echo "fuzz: 0 passed, 1 failed"
    return 1
  fi
  while read -r dir name; do
    if [ -n "${FUZZ_TARGETS:-}" ] && ! grep -qw -- "$name" <<<"$FUZZ_TARGETS"; then
      continue
    fi
    n=$(budget "$name")
    start=$(date +%s)
    echo "== $name ($dir, ${n}x)"
    "$GO" test -run '^$' -fuzz "^${name}\$" -fuzztime "${n}x" "$dir" 2>&1 | tail -n 40
    rc=${PIPESTATUS[0]}
    if [ "$rc" = 0 ]; then
      passed=$((passed + 1))
      echo "   ok $name ($(( $(date +%s) - start ))s)"
    else
      failed=$((failed + 1))
      failures+=("$name")
      echo "   FAIL $name ($(( $(date +%s) - start ))s): a failing input, if found, is under $dir/testdata/fuzz/$name/"
    fi
  done <<<"$list"
  [ ${#failures[@]} = 0 ] || echo "fuzz: failed: ${failures[*]}"
  echo "fuzz: $passed passed, $failed failed"
  [ "$failed" = 0 ]
}

# selftest builds a throwaway module whose one target fails on an input the
# fuzzer finds at once, runs this script's loop on it, and checks that the
# run fails and the input was written.
selftest() {
  local tmp rc
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  mkdir -p "$tmp/scripts"
  cat >"$tmp/go.mod" <<'MOD'
module fuzzselftest

go 1.22
MOD
  cat >"$tmp/bug_test.go" <<'SRC'
package fuzzselftest

import "testing"

func FuzzFindsBug(f *testing.F) {
	f.Add([]byte("a"))
	f.Fuzz(func(t *testing.T, b []byte) {
		if len(b) >= 2 && b[0] != 'a' {
			t.Fatalf("found the planted bug: %q", b)
		}
	})
}
SRC
  echo "FuzzFindsBug 1000000" >"$tmp/scripts/fuzz-budgets"
  (cd "$tmp" && FUZZ_SCALE=1 "$self" run-here) >"$tmp/out" 2>&1
  rc=$?
  if [ "$rc" = 0 ]; then
    cat "$tmp/out"; echo "fuzz selftest: a planted bug did not fail the run"; return 1
  fi
  if ! ls "$tmp"/testdata/fuzz/FuzzFindsBug/* >/dev/null 2>&1; then
    cat "$tmp/out"; echo "fuzz selftest: no failing input was written"; return 1
  fi
  if ! grep -q '^fuzz: 0 passed, 1 failed$' "$tmp/out"; then
    cat "$tmp/out"; echo "fuzz selftest: the closing line is wrong"; return 1
  fi
  echo "fuzz selftest: a planted bug failed the run and its input was written: ok"
}

case "${1:-all}" in
  all) run_all ;;
  run-here) # used by selftest: the current directory is the module
    targets() { grep -rEo --include='*_test.go' '^func Fuzz[A-Za-z0-9_]*\(f \*testing\.F\)' . |
      sed -E 's#^(.*)/[^/]*_test\.go:func (Fuzz[A-Za-z0-9_]*)\(.*#\1 \2#' | sort -u; }
    run_all ;;
  selftest) selftest ;;
  list) targets . ;;
  *) echo "usage: $0 [all|selftest|list]" >&2; exit 2 ;;
esac
