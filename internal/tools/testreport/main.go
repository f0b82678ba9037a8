// Command testreport reads `go test -json` on standard input and prints what
// a person needs from it: the output of every failed test and every skip
// (with its reason), one line per package as `go test` prints it, and a
// closing line
//
//	TIER: N passed, N failed, N skipped
//
// counting every test and subtest. A package that fails without a failed
// test (a build error, a panic in TestMain, a timeout) counts as one
// failure. It exits 1 when anything failed, 0 otherwise.
//
//	go test -json ./... | go run ./internal/tools/testreport -tier go
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action     string
	Package    string
	Test       string
	Output     string
	ImportPath string // build-output and build-fail
}

type key struct{ pkg, test string }

type report struct {
	w                     io.Writer
	verbose               bool
	out                   map[key][]string
	failedTests           map[string]int // per package
	passed, failed, skips int
	skipped               []string
	failedPkgs            []string
}

func newReport(w io.Writer, verbose bool) *report {
	return &report{w: w, verbose: verbose, out: map[key][]string{}, failedTests: map[string]int{}}
}

func (r *report) event(e event) {
	k := key{e.Package, e.Test}
	switch e.Action {
	case "build-output":
		fmt.Fprint(r.w, e.Output)
	case "output":
		if r.verbose {
			fmt.Fprint(r.w, e.Output)
		}
		r.out[k] = append(r.out[k], e.Output)
	case "pass", "fail", "skip":
		if e.Test == "" {
			r.packageDone(e)
			return
		}
		switch e.Action {
		case "pass":
			r.passed++
		case "fail":
			r.failed++
			r.failedTests[e.Package]++
			r.flush(k)
		case "skip":
			r.skips++
			r.skipped = append(r.skipped, e.Package+" "+e.Test+": "+skipReason(r.out[k]))
			r.flush(k)
		}
		delete(r.out, k)
	}
}

// flush prints the buffered output of a test (unless verbose already did).
func (r *report) flush(k key) {
	if !r.verbose {
		for _, l := range r.out[k] {
			fmt.Fprint(r.w, l)
		}
	}
}

func (r *report) packageDone(e event) {
	k := key{e.Package, ""}
	lines := r.out[k]
	delete(r.out, k)
	if e.Action == "fail" {
		r.failedPkgs = append(r.failedPkgs, e.Package)
		if r.failedTests[e.Package] == 0 {
			r.failed++ // a build error, a panic outside a test, a timeout
		}
		// A panic or timeout leaves the running tests' output unprinted.
		var open []key
		for ok := range r.out {
			if ok.pkg == e.Package {
				open = append(open, ok)
			}
		}
		sort.Slice(open, func(i, j int) bool { return open[i].test < open[j].test })
		for _, ok := range open {
			r.flush(ok)
			delete(r.out, ok)
		}
		if !r.verbose {
			for _, l := range lines {
				fmt.Fprint(r.w, l)
			}
		}
		return
	}
	if r.verbose {
		return
	}
	// Only the closing "ok  pkg  1.2s" (or "?  pkg  [no test files]") line.
	for _, l := range lines {
		if strings.HasPrefix(l, "ok ") || strings.HasPrefix(l, "?") {
			fmt.Fprint(r.w, l)
		}
	}
}

// skipReason is the last message the test logged before it skipped.
func skipReason(lines []string) string {
	reason := ""
	for _, l := range lines {
		t := strings.TrimSpace(l)
		if t == "" || strings.HasPrefix(t, "=== ") || strings.HasPrefix(t, "--- SKIP") {
			continue
		}
		reason = t
	}
	return reason
}

func (r *report) summary(tier string) {
	if len(r.skipped) > 0 {
		fmt.Fprintf(r.w, "\n%s: %d skipped:\n", tier, len(r.skipped))
		for _, s := range r.skipped {
			fmt.Fprintf(r.w, "  SKIP %s\n", s)
		}
	}
	if len(r.failedPkgs) > 0 {
		fmt.Fprintf(r.w, "\n%s: failed packages: %s\n", tier, strings.Join(r.failedPkgs, " "))
	}
	fmt.Fprintf(r.w, "%s: %d passed, %d failed, %d skipped\n", tier, r.passed, r.failed, r.skips)
}

func main() {
	tier := flag.String("tier", "go", "the name printed before the closing counts")
	verbose := flag.Bool("v", false, "print every line of test output as it arrives")
	flag.Parse()
	r := newReport(os.Stdout, *verbose)
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for sc.Scan() {
		line := sc.Bytes()
		var e event
		if err := json.Unmarshal(line, &e); err != nil || e.Action == "" {
			fmt.Fprintln(os.Stdout, string(line)) // not an event: pass it through
			continue
		}
		r.event(e)
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintf(os.Stderr, "testreport: reading input: %v\n", err)
		r.failed++
	}
	r.summary(*tier)
	if r.failed > 0 {
		os.Exit(1)
	}
}
