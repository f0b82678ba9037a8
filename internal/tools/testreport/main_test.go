package main

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
)

func run(t *testing.T, events ...event) (string, *report) {
	t.Helper()
	var b bytes.Buffer
	r := newReport(&b, false)
	for _, e := range events {
		// Round-trip through JSON, as the real input arrives.
		j, _ := json.Marshal(e)
		var d event
		if err := json.Unmarshal(j, &d); err != nil {
			t.Fatal(err)
		}
		r.event(d)
	}
	r.summary("go")
	return b.String(), r
}

func TestCounts(t *testing.T) {
	out, r := run(t,
		event{Action: "output", Package: "p", Test: "TestA", Output: "=== RUN   TestA\n"},
		event{Action: "output", Package: "p", Test: "TestA", Output: "    a_test.go:1: quiet\n"},
		event{Action: "pass", Package: "p", Test: "TestA"},
		event{Action: "output", Package: "p", Test: "TestB", Output: "    b_test.go:9: boom\n"},
		event{Action: "fail", Package: "p", Test: "TestB"},
		event{Action: "output", Package: "p", Test: "TestC", Output: "    c_test.go:3: needs root\n"},
		event{Action: "output", Package: "p", Test: "TestC", Output: "--- SKIP: TestC (0.00s)\n"},
		event{Action: "skip", Package: "p", Test: "TestC"},
		event{Action: "output", Package: "p", Output: "FAIL\tp\t0.1s\n"},
		event{Action: "fail", Package: "p"},
		event{Action: "output", Package: "q", Output: "ok  \tq\t0.2s\n"},
		event{Action: "pass", Package: "q"},
	)
	if r.passed != 1 || r.failed != 1 || r.skips != 1 {
		t.Fatalf("counts %d/%d/%d, want 1/1/1\n%s", r.passed, r.failed, r.skips, out)
	}
	for _, want := range []string{"boom", "SKIP p TestC: c_test.go:3: needs root", "ok  \tq", "go: 1 passed, 1 failed, 1 skipped\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "quiet") {
		t.Errorf("a passing test's output was printed:\n%s", out)
	}
}

func TestPackageFailureWithoutTest(t *testing.T) {
	out, r := run(t,
		event{Action: "output", Package: "p", Test: "TestHang", Output: "=== RUN   TestHang\n"},
		event{Action: "output", Package: "p", Output: "panic: test timed out after 1s\n"},
		event{Action: "fail", Package: "p"},
	)
	if r.failed != 1 {
		t.Fatalf("failed = %d, want 1 for a package that died", r.failed)
	}
	if !strings.Contains(out, "timed out") || !strings.Contains(out, "=== RUN   TestHang") {
		t.Errorf("the dying package's output is missing:\n%s", out)
	}
}
