package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/viperblock/viperblock-csi/internal/testutil"
)

func completionScript(t *testing.T, shell string) string {
	t.Helper()
	var out, errb bytes.Buffer
	if code := run(context.Background(), []string{"completion", shell}, &out, &errb, func(string) string { return "" }); code != 0 {
		t.Fatalf("completion %s: exit %d: %s", shell, code, errb.String())
	}
	return out.String()
}

// bashComplete sources the bash script and completes the command line
// words (the last one is the word being completed) in dir.
func bashComplete(t *testing.T, script, dir string, words ...string) []string {
	t.Helper()
	var quoted []string
	for _, w := range words {
		quoted = append(quoted, "'"+w+"'")
	}
	prog := script + "\nCOMP_WORDS=(vblock " + strings.Join(quoted, " ") + ")\nCOMP_CWORD=" +
		strconv.Itoa(len(words)) + "\n_vblock\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n"
	cmd := exec.Command("bash", "--norc", "--noprofile", "-c", prog)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("bash: %v\n%s", err, out)
	}
	return strings.Fields(string(out))
}

func TestCompletionBash(t *testing.T) {
	testutil.NeedCommands(t, "bash")
	script := completionScript(t, "bash")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "disk.img"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "wal"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		words []string
		want  string
	}{
		{[]string{""}, strings.Join(append(commandNames(), "help", "--encryption-key-file", "--store", "--wal-dir"), " ")},
		{[]string{"sn"}, "snapshot"},
		{[]string{"st"}, "store"},
		{[]string{"--store", "x", "cr"}, "create"},
		{[]string{"snapshot", ""}, "create list delete diff"},
		{[]string{"snapshot", "d"}, "delete diff"},
		{[]string{"snapshot", "create", "--js"}, "--json"},
		{[]string{"store", ""}, "check"},
		{[]string{"completion", ""}, "bash zsh fish"},
		{[]string{"create", "v", "--durability", ""}, "node store"},
		{[]string{"import", "--progress", "a"}, "auto always"},
		{[]string{"create", "--size", ""}, ""},
		{[]string{"gc", "--"}, "--encryption-key-file --store --wal-dir --json --wait --help"},
		{[]string{"list", "-"}, "--encryption-key-file --store --wal-dir --json -l --help"},
		{[]string{"create", "v", "--compression", ""}, "zstd lz4 none"},
		{[]string{"import", "v", "di"}, "disk.img"},
		{[]string{"serve", "--wal-dir", ""}, "wal"},
		{[]string{"help", "lo"}, "load-dir"},
	} {
		got := strings.Join(bashComplete(t, script, dir, tc.words...), " ")
		if got != tc.want {
			t.Errorf("vblock %s<TAB> = %q, want %q", strings.Join(tc.words, " "), got, tc.want)
		}
	}
}

// The zsh and fish scripts parse, and name every command and the flags of
// one.
func TestCompletionZshFish(t *testing.T) {
	for _, sh := range []string{"zsh", "fish"} {
		t.Run(sh, func(t *testing.T) {
			testutil.NeedCommands(t, sh)
			script := completionScript(t, sh)
			f := filepath.Join(t.TempDir(), "vblock."+sh)
			if err := os.WriteFile(f, []byte(script), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := exec.Command(sh, "-n", f).CombinedOutput(); err != nil {
				t.Fatalf("%s -n: %v\n%s", sh, err, out)
			}
			flags := map[string][]string{"zsh": {"--durability", "--owner-wait"}, "fish": {"-l durability", "-l owner-wait"}}[sh]
			for _, c := range append(append(commandNames(), flags...), "check", "bash zsh fish") {
				if !strings.Contains(script, c) {
					t.Errorf("%s script lacks %q", sh, c)
				}
			}
		})
	}
	t.Run("fish-complete", func(t *testing.T) {
		testutil.NeedCommands(t, "fish")
		script := completionScript(t, "fish")
		for _, tc := range []struct{ line, want string }{
			{"vblock sna", "snapshot"},
			{"vblock snapshot ", "create delete diff list"},
			{"vblock create --dur", "--durability"},
			{"vblock create --durability ", "node store"},
		} {
			out, err := exec.Command("fish", "--no-config", "-c", script+"\ncomplete -C '"+tc.line+"'").CombinedOutput()
			if err != nil {
				t.Fatalf("fish: %v\n%s", err, out)
			}
			var got []string
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				got = append(got, strings.SplitN(l, "\t", 2)[0])
			}
			if g := strings.Join(slices.Sorted(slices.Values(got)), " "); g != tc.want {
				t.Errorf("fish %q = %q, want %q", tc.line, g, tc.want)
			}
		}
	})
}
