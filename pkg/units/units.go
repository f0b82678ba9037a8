// Package units parses and formats byte sizes.
//
// Parse accepts a decimal integer or fraction followed by an optional unit:
//
//	B                   bytes (the default)
//	K  Ki KiB           1024        (dd and nbdkit style: a bare letter is binary)
//	M  Mi MiB           1024²
//	G  Gi GiB           1024³
//	T  Ti TiB           1024⁴
//	P  Pi PiB           1024⁵
//	E  Ei EiB           1024⁶
//	KB MB GB TB PB EB   powers of 1000
//
// Fractions are computed exactly ("1.5K" is 1536; "0.1B" is an error, not a
// rounded byte).
// Units are case-insensitive except that "b" is never bits. Spaces between
// the number and the unit are allowed: "10GiB", "10 GiB", "512m", "4096".
package units

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
)

// ErrSyntax is returned (wrapped) for a size that cannot be parsed.
var ErrSyntax = errors.New("units: invalid size")

var multipliers = map[string]int64{
	"": 1, "b": 1,
	"k": 1 << 10, "ki": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mi": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gi": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "ti": 1 << 40, "tib": 1 << 40,
	"p": 1 << 50, "pi": 1 << 50, "pib": 1 << 50,
	"e": 1 << 60, "ei": 1 << 60, "eib": 1 << 60,
	"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "pb": 1e15, "eb": 1e18,
}

// Parse parses a size such as "10GiB", "512MiB", "1.5G" or "4096" into
// bytes. The result must be a whole number of bytes between 0 and
// math.MaxInt64.
func Parse(s string) (int64, error) {
	in := s
	s = strings.TrimSpace(s)
	i := 0
	for i < len(s) && (s[i] >= '0' && s[i] <= '9' || s[i] == '.') {
		i++
	}
	num, unit := s[:i], strings.ToLower(strings.TrimSpace(s[i:]))
	if num == "" {
		return 0, fmt.Errorf("%w: %q: expected a number such as 10GiB, 512MiB or 4096", ErrSyntax, in)
	}
	mult, ok := multipliers[unit]
	if !ok {
		return 0, fmt.Errorf("%w: %q: unknown unit %q (use B, KiB, MiB, GiB, TiB, PiB, EiB or KB, MB, GB, TB, PB, EB)", ErrSyntax, in, s[i:])
	}
	if !strings.Contains(num, ".") {
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%w: %q: %v", ErrSyntax, in, errors.Unwrap(err))
		}
		if n != 0 && n > math.MaxInt64/mult {
			return 0, fmt.Errorf("%w: %q is too large", ErrSyntax, in)
		}
		return n * mult, nil
	}
	// A fraction, in exact arithmetic: no float rounding can turn a
	// fractional byte count into a whole one.
	if strings.Count(num, ".") != 1 || num == "." {
		return 0, fmt.Errorf("%w: %q", ErrSyntax, in)
	}
	if strings.HasPrefix(num, ".") {
		num = "0" + num // ".5K"
	}
	if strings.HasSuffix(num, ".") {
		num += "0" // "1.K"
	}
	r, ok := new(big.Rat).SetString(num)
	if !ok {
		return 0, fmt.Errorf("%w: %q", ErrSyntax, in)
	}
	r.Mul(r, new(big.Rat).SetInt64(mult))
	if !r.IsInt() {
		return 0, fmt.Errorf("%w: %q is not a whole number of bytes", ErrSyntax, in)
	}
	if !r.Num().IsInt64() {
		return 0, fmt.Errorf("%w: %q is too large", ErrSyntax, in)
	}
	return r.Num().Int64(), nil
}

// Format renders n bytes for people: "0 B", "4 KiB", "1.5 GiB", "10 GiB".
func Format(n int64) string {
	const units = "KMGTPE"
	if n < 1024 && n > -1024 {
		return fmt.Sprintf("%d B", n)
	}
	f := float64(n)
	i := -1
	for math.Abs(f) >= 1024 && i < len(units)-1 {
		f /= 1024
		i++
	}
	s := strconv.FormatFloat(f, 'f', 1, 64)
	s = strings.TrimSuffix(s, ".0")
	return s + " " + string(units[i]) + "iB"
}
