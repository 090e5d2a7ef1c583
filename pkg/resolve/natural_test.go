package resolve

import (
	"regexp"
	"strings"
	"testing"
)

func TestNaturalLess(t *testing.T) {
	t.Parallel()
	tests := []struct {
		a, b string
		want bool
	}{
		{"1.9", "1.10", true},
		{"1.10", "1.9", false},
		{"a", "b", true},
		{"x-2", "x-10", true},
		{"x-010", "x-9", false},
		{"x-01", "x-1", true}, // equal numbers: byte order breaks the tie
		{"x-1", "x-01", false},
		{"20260926", "20260926.1", true},
		{"20260926.10", "20260926.9", false},
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
	t.Parallel()
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

// FuzzListing feeds hostile directory listings to the discovery helpers:
// no panic, every name is a plain file in the listed directory, at most
// maxListedLinks of them, and the chosen one is a greatest listed name.
func FuzzListing(f *testing.F) {
	f.Add([]byte(`<a href="../">Parent Directory</a><a href="?C=N;O=D">Name</a>` +
		`<a href="Fedora-Cloud-41-1.4-x86_64-CHECKSUM">x</a><a href="Fedora-Cloud-41-1.10-x86_64-CHECKSUM">y</a>`))
	f.Add([]byte(`<A HREF='./F%2041.CHECKSUM#frag'> <a href = "%2e%2e"> <a href="https://evil.example/x-CHECKSUM"> <a href="a%00b">`))
	f.Add([]byte(`<a href="/pub/fedora/linux/releases/41/Cloud/x86_64/images/Fedora-Cloud-41-1.4-x86_64-CHECKSUM">`))
	re := regexp.MustCompile(`^(?:.*CHECKSUM)$`)
	f.Fuzz(func(t *testing.T, body []byte) {
		names := listedNames(body)
		if len(names) > maxListedLinks {
			t.Fatalf("%d names from one listing", len(names))
		}
		for _, n := range names {
			if n == "" || n == "." || n == ".." || strings.ContainsAny(n, "/\\\x00") {
				t.Fatalf("listed name %q leaves the directory", n)
			}
		}
		best, ok := greatestMatch(names, re)
		if !ok {
			return
		}
		if !re.MatchString(best) {
			t.Fatalf("greatestMatch returned %q, which does not match", best)
		}
		for _, n := range names {
			if re.MatchString(n) && naturalLess(best, n) {
				t.Fatalf("%q was chosen but %q is greater", best, n)
			}
			if naturalLess(n, n) {
				t.Fatalf("naturalLess(%q, %q) is true", n, n)
			}
		}
	})
}

// TestListingLinkCap: a listing with more links than the cap yields no more
// names than the cap.
func TestListingLinkCap(t *testing.T) {
	t.Parallel()
	body := []byte(strings.Repeat(`<a href="x-CHECKSUM">`, maxListedLinks+5))
	if got := len(listedNames(body)); got != maxListedLinks {
		t.Fatalf("%d names, want the cap %d", got, maxListedLinks)
	}
}
