package image

import "strings"

// CompareNatural orders strings with runs of digits compared as numbers, so
// Fedora's compose "1.10" sorts after "1.9" and Ubuntu's serial
// "20260926.10" after "20260926.9" (and "20260926" before "20260926.1").
// Strings equal in that order (numbers with extra leading zeros) fall back
// to byte order, so the result is a total order: 0 only for equal strings.
// Serials are ordered by it: the greatest is the newest.
func CompareNatural(a, b string) int {
	x, y := a, b
	for x != "" && y != "" {
		rx, ry := leadingRun(x), leadingRun(y)
		if rx != ry {
			dx, dy := isDigit(rx[0]), isDigit(ry[0])
			if !dx || !dy {
				return strings.Compare(rx, ry)
			}
			nx, ny := strings.TrimLeft(rx, "0"), strings.TrimLeft(ry, "0")
			if len(nx) != len(ny) {
				return cmpInt(len(nx), len(ny))
			}
			if c := strings.Compare(nx, ny); c != 0 {
				return c
			}
		}
		x, y = x[len(rx):], y[len(ry):]
	}
	if c := cmpInt(len(x), len(y)); c != 0 {
		return c
	}
	return strings.Compare(a, b)
}

func cmpInt(a, b int) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

// leadingRun returns the leading run of digits or of non-digits of s ("" for "").
func leadingRun(s string) string {
	if s == "" {
		return ""
	}
	d := isDigit(s[0])
	i := 1
	for i < len(s) && isDigit(s[i]) == d {
		i++
	}
	return s[:i]
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }
