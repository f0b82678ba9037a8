package units

import (
	"errors"
	"testing"
)

func TestParse(t *testing.T) {
	good := map[string]int64{
		"0": 0, "4096": 4096, "4096B": 4096, "1K": 1024, "1k": 1024, "1KiB": 1024, "1Ki": 1024,
		"512MiB": 512 << 20, "512m": 512 << 20, "10GiB": 10 << 30, "10 GiB": 10 << 30, "10G": 10 << 30,
		"1TiB": 1 << 40, "1PiB": 1 << 50, "1KB": 1000, "1MB": 1e6, "2GB": 2e9, "1.5GiB": 3 << 29,
		" 7 ": 7, "0.5KiB": 512,
	}
	for in, want := range good {
		got, err := Parse(in)
		if err != nil || got != want {
			t.Errorf("Parse(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "GiB", "-1", "1.2.3G", "10 XB", "1e9", "0.1B", "9999999999P", "99999999999999999999"} {
		if got, err := Parse(in); !errors.Is(err, ErrSyntax) {
			t.Errorf("Parse(%q) = %d, %v; want ErrSyntax", in, got, err)
		}
	}
}

func TestFormat(t *testing.T) {
	for n, want := range map[int64]string{0: "0 B", 1023: "1023 B", 1024: "1 KiB", 1536: "1.5 KiB", 10 << 30: "10 GiB", 1 << 40: "1 TiB"} {
		if got := Format(n); got != want {
			t.Errorf("Format(%d) = %q; want %q", n, got, want)
		}
	}
}
