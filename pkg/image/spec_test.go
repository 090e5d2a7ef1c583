package image

import (
	"errors"
	"strings"
	"testing"
)

func TestCheckSerial(t *testing.T) {
	for _, ok := range []string{"20260926", "20260926.1", "20260901-2211", "A_b-1.2", strings.Repeat("9", MaxNameLen)} {
		if err := CheckSerial(ok); err != nil {
			t.Errorf("CheckSerial(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", ".", "..", "a..b", ".hidden", "-x", "a/b", `a\b`, "a b", "a%2f", "a?b", "a#b", "a\x00", "ü", strings.Repeat("9", MaxNameLen+1)} {
		err := CheckSerial(bad)
		if !errors.Is(err, ErrInvalidSpec) {
			t.Errorf("CheckSerial(%q) = %v, want ErrInvalidSpec", bad, err)
		} else if strings.ContainsAny(err.Error(), "\x00") {
			t.Errorf("error carries a raw NUL: %q", err)
		}
	}
}

func TestNormalizeKeepsSerial(t *testing.T) {
	got, err := Spec{Distro: "Ubuntu", Version: "24.04", Arch: "x86_64", Serial: "20260926.1"}.Normalize()
	if err != nil || got != (Spec{Distro: "ubuntu", Version: "24.04", Arch: ArchAMD64, Serial: "20260926.1"}) {
		t.Fatalf("Normalize = %v, %v", got, err)
	}
	if got.String() != "ubuntu 24.04 amd64 serial 20260926.1" {
		t.Errorf("String() = %q", got.String())
	}
	if _, err := (Spec{Distro: "ubuntu", Version: "24.04", Serial: "../x"}).Normalize(); !errors.Is(err, ErrInvalidSpec) {
		t.Errorf("hostile serial: %v", err)
	}
}

func TestCompareNatural(t *testing.T) {
	// Each list is in ascending order.
	for _, order := range [][]string{
		{"20260901", "20260926", "20260926.1", "20260926.2", "20260926.10", "20261001"},
		{"20260901-0900", "20260901-2211", "20260902-0001"},
		{"1.9", "1.10", "1.100"},
		{"", "a", "ab", "b"},
		{"x-01", "x-1", "x-2"},
	} {
		for i := range order {
			for j := range order {
				want := 0
				if i < j {
					want = -1
				} else if i > j {
					want = 1
				}
				if got := CompareNatural(order[i], order[j]); got != want {
					t.Errorf("CompareNatural(%q, %q) = %d, want %d", order[i], order[j], got, want)
				}
			}
		}
	}
}

// FuzzCompareNatural: the order is total and antisymmetric, 0 only for equal strings.
func FuzzCompareNatural(f *testing.F) {
	f.Add("20260926.1", "20260926.10")
	f.Add("x-01", "x-1")
	f.Fuzz(func(t *testing.T, a, b string) {
		ab, ba := CompareNatural(a, b), CompareNatural(b, a)
		if ab != -ba || (ab == 0) != (a == b) {
			t.Fatalf("CompareNatural(%q, %q) = %d, reverse %d", a, b, ab, ba)
		}
	})
}
