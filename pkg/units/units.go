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
//	KB MB GB TB PB      powers of 1000
//
// Units are case-insensitive except that "b" is never bits. Spaces between
// the number and the unit are allowed: "10GiB", "10 GiB", "512m", "4096".
package units

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
)

// ErrSyntax is returned (wrapped) for a size that cannot be parsed.
var ErrSyntax = errors.New("units: invalid size")

var multipliers = map[string]float64{
	"": 1, "b": 1,
	"k": 1 << 10, "ki": 1 << 10, "kib": 1 << 10,
	"m": 1 << 20, "mi": 1 << 20, "mib": 1 << 20,
	"g": 1 << 30, "gi": 1 << 30, "gib": 1 << 30,
	"t": 1 << 40, "ti": 1 << 40, "tib": 1 << 40,
	"p": 1 << 50, "pi": 1 << 50, "pib": 1 << 50,
	"kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12, "pb": 1e15,
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
		return 0, fmt.Errorf("%w: %q: unknown unit %q (use B, KiB, MiB, GiB, TiB, PiB or KB, MB, GB, TB, PB)", ErrSyntax, in, s[i:])
	}
	if !strings.Contains(num, ".") {
		n, err := strconv.ParseInt(num, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%w: %q: %v", ErrSyntax, in, errors.Unwrap(err))
		}
		m := int64(mult)
		if n != 0 && n > math.MaxInt64/m {
			return 0, fmt.Errorf("%w: %q is too large", ErrSyntax, in)
		}
		return n * m, nil
	}
	f, err := strconv.ParseFloat(num, 64)
	if err != nil {
		return 0, fmt.Errorf("%w: %q", ErrSyntax, in)
	}
	v := f * mult
	if v >= math.MaxInt64 {
		return 0, fmt.Errorf("%w: %q is too large", ErrSyntax, in)
	}
	if v != math.Trunc(v) {
		return 0, fmt.Errorf("%w: %q is not a whole number of bytes", ErrSyntax, in)
	}
	return int64(v), nil
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
