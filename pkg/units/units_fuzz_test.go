package units

import (
	"errors"
	"math"
	"math/big"
	"strconv"
	"strings"
	"testing"
)

// fzUnits are the units of the package doc with their multipliers.
var fzUnits = []struct {
	names []string
	mult  int64
}{
	{[]string{"", "B"}, 1},
	{[]string{"K", "Ki", "KiB"}, 1 << 10},
	{[]string{"M", "Mi", "MiB"}, 1 << 20},
	{[]string{"G", "Gi", "GiB"}, 1 << 30},
	{[]string{"T", "Ti", "TiB"}, 1 << 40},
	{[]string{"P", "Pi", "PiB"}, 1 << 50},
	{[]string{"E", "Ei", "EiB"}, 1 << 60},
	{[]string{"KB"}, 1e3}, {[]string{"MB"}, 1e6}, {[]string{"GB"}, 1e9}, {[]string{"TB"}, 1e12}, {[]string{"PB"}, 1e15},
	{[]string{"EB"}, 1e18},
}

// fzExact returns the exact value of a size Parse accepted: its number
// part (digits and '.') times its unit, as a rational, or nil when the
// input has no such parts (it should not have been accepted then).
func fzExact(s string) *big.Rat {
	s = strings.TrimSpace(s)
	i := strings.IndexFunc(s, func(r rune) bool { return !(r >= '0' && r <= '9' || r == '.') })
	if i < 0 {
		i = len(s)
	}
	num, unit := s[:i], strings.TrimSpace(s[i:])
	if strings.HasPrefix(num, ".") {
		num = "0" + num // big.Rat wants a digit before the point
	}
	x, ok := new(big.Rat).SetString(strings.TrimSuffix(num, "."))
	if !ok || strings.Count(num, ".") > 1 {
		return nil
	}
	for _, u := range fzUnits {
		for _, n := range u.names {
			if strings.EqualFold(n, unit) {
				return x.Mul(x, new(big.Rat).SetInt64(u.mult))
			}
		}
	}
	return nil
}

// FuzzParse checks Parse on arbitrary strings: it never panics; it fails
// only with ErrSyntax; a size it accepts is in [0, MaxInt64], is the
// input's number times its unit, exactly (a fraction that is not a whole
// number of bytes, however close, is refused), and reads back the
// same from its decimal form, with or without "B". Format of any int64
// never panics, and what Parse makes of it is within half of Format's last
// digit (and float64 rounding) of the value.
func FuzzParse(f *testing.F) {
	for _, s := range []string{"0", "4096", "4096B", "1K", "1k", "1KiB", "512MiB", "10 GiB", "1.5GiB", " 7 ", "0.5KiB", "1KB",
		"2GB", "1PB", "8191P", "8192P", "9223372036854775807", "9223372036854775808", "", "GiB", "-1", "1.2.3G", "10 XB",
		"1e9", "0.1B", "9999999999P", ".5K", "1.", ".", "1 EiB", "1.1KB", "4503599627370496.5", "1.0000000000000000001K",
		"\u00a010\u00a0MiB\u2003", "10 b", "10bit"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		v, err := Parse(s)
		if err != nil {
			if !errors.Is(err, ErrSyntax) {
				t.Fatalf("Parse(%q): unexpected error class: %v", s, err)
			}
		} else {
			if v < 0 {
				t.Fatalf("Parse(%q) = %d", s, v)
			}
			exact := fzExact(s)
			if exact == nil {
				t.Fatalf("Parse(%q) = %d, but it is no number and unit", s, v)
			}
			if got := new(big.Rat).SetInt64(v); got.Cmp(exact) != 0 {
				t.Fatalf("Parse(%q) = %d, exactly %s", s, v, exact.FloatString(3))
			}
			for _, back := range []string{strconv.FormatInt(v, 10), strconv.FormatInt(v, 10) + "B"} {
				if w, err := Parse(back); err != nil || w != v {
					t.Fatalf("Parse(%q) = %d, but Parse(%q) = %d, %v", s, v, back, w, err)
				}
			}
		}
		// Format, on an int64 taken from the input.
		var n int64
		for i := 0; i < len(s) && i < 8; i++ {
			n = n<<8 | int64(s[i])
		}
		fs := Format(n)
		if w, err := Parse(fs); err == nil && n >= 0 {
			unit := int64(1)
			for unit <= n/1024 && unit < 1<<60 {
				unit *= 1024
			}
			// Half a last digit, and float64 rounding at that boundary.
			slack := unit/20 + n>>40 + 1
			if d := w - n; d > slack || d < -slack {
				t.Fatalf("Format(%d) = %q, which parses as %d", n, fs, w)
			}
		}
	})
}

// FuzzParseRoundTrip formats a whole number with each unit spelling of the
// package doc (any case, with or without a space, surrounded by white
// space) and checks that Parse reads back exactly number times unit, or
// refuses with ErrSyntax exactly when that exceeds MaxInt64.
func FuzzParseRoundTrip(f *testing.F) {
	f.Add(uint64(10), uint8(9), uint8(0))
	f.Add(uint64(8191), uint8(16), uint8(1))
	f.Add(uint64(8192), uint8(16), uint8(1))
	f.Add(uint64(math.MaxInt64), uint8(0), uint8(2))
	f.Add(uint64(math.MaxInt64)+1, uint8(1), uint8(3))
	f.Add(uint64(9223372), uint8(21), uint8(7))
	f.Fuzz(func(t *testing.T, n uint64, unit, style uint8) {
		var names []string
		var mults []int64
		for _, u := range fzUnits {
			for _, nm := range u.names {
				names, mults = append(names, nm), append(mults, u.mult)
			}
		}
		i := int(unit) % len(names)
		name, mult := names[i], mults[i]
		if style&1 != 0 {
			name = strings.ToLower(name)
		}
		s := strconv.FormatUint(n, 10)
		if style&2 != 0 {
			s += " "
		}
		s += name
		if style&4 != 0 {
			s = " \t" + s + "\n"
		}
		v, err := Parse(s)
		want := new(big.Int).Mul(new(big.Int).SetUint64(n), big.NewInt(mult))
		if !want.IsInt64() {
			if !errors.Is(err, ErrSyntax) {
				t.Fatalf("Parse(%q) = %d, %v; want ErrSyntax (%s is too large)", s, v, err, want)
			}
			return
		}
		if err != nil || v != want.Int64() {
			t.Fatalf("Parse(%q) = %d, %v; want %s", s, v, err, want)
		}
	})
}
