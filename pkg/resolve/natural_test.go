package resolve

import (
	"regexp"
	"testing"
)

func TestNaturalLess(t *testing.T) {
	tests := []struct {
		a, b string
		want bool
	}{
		{"1.9", "1.10", true},
		{"1.10", "1.9", false},
		{"a", "b", true},
		{"x-2", "x-10", true},
		{"x-010", "x-9", false},
		{"x-01", "x-1", false},
		{"same", "same", false},
		{"ab", "abc", true},
		{"", "a", true},
		{"Fedora-Cloud-41-1.4-x86_64-CHECKSUM", "Fedora-Cloud-41-1.14-x86_64-CHECKSUM", true},
	}
	for _, tt := range tests {
		if got := naturalLess(tt.a, tt.b); got != tt.want {
			t.Errorf("naturalLess(%q, %q) = %v, want %v", tt.a, tt.b, got, tt.want)
		}
	}
}

func TestGreatestMatchAndListing(t *testing.T) {
	re := regexp.MustCompile(`^(?:F-41-[0-9.]+-CHECKSUM)$`)
	tests := []struct {
		hrefs []string
		want  string
		ok    bool
	}{
		{[]string{"F-41-1.9-CHECKSUM", "F-41-1.10-CHECKSUM", "F-41-1.2-CHECKSUM"}, "F-41-1.10-CHECKSUM", true},
		{[]string{"./F-41-1.4-CHECKSUM?raw", "../", "sub/F-41-9-CHECKSUM"}, "F-41-1.4-CHECKSUM", true},
		{[]string{"F-41-1.4-CHECKSUM.asc", "F-41-x-CHECKSUM", "%2e%2e%2fF-41-1-CHECKSUM", "F-41-1-CHECKSUM%00"}, "", false},
		{nil, "", false},
	}
	for _, tt := range tests {
		var names []string
		for _, h := range tt.hrefs {
			if n, ok := listedName(h); ok {
				names = append(names, n)
			}
		}
		got, ok := greatestMatch(names, re)
		if got != tt.want || ok != tt.ok {
			t.Errorf("hrefs %q: got %q %v, want %q %v", tt.hrefs, got, ok, tt.want, tt.ok)
		}
	}
}
