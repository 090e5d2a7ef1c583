package resolve

import (
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
)

func ubuntuSource(t testing.TB) catalog.SerialSource {
	t.Helper()
	c, err := catalog.New()
	if err != nil {
		t.Fatal(err)
	}
	src, err := c.Serials(catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	return src
}

// Listings in the forms real servers generate.
func TestParseListingStyles(t *testing.T) {
	t.Parallel()
	day := func(d, h, m int) time.Time { return time.Date(2026, 9, d, h, m, 0, 0, time.UTC) }
	tests := []struct {
		name string
		body string
		want map[string]time.Time // serial → date
	}{
		{"apache pre", `<pre><img src="/icons/blank.gif" alt="Icon "> <a href="?C=N;O=D">Name</a>
<a href="/releases/">Parent Directory</a>                             -
<a href="release-20260901/">release-20260901/</a>        2026-09-01 09:37    -
<a href="release-20260926.1/">release-20260926.1/</a>      2026-09-27 10:01    -
<a href="release/">release/</a>                 2026-09-27 10:01    -
</pre>`, map[string]time.Time{"20260901": day(1, 9, 37), "20260926.1": day(27, 10, 1)}},
		{"apache table", `<table><tr><th><a href="?C=M;O=A">Last modified</a></th></tr>
<tr><td valign="top"><img src="/icons/folder.gif" alt="[DIR]"></td><td><a href="release-20260926/">release-20260926/</a></td><td align="right">2026-09-26 18:04  </td><td align="right">  - </td></tr>
<tr><td><a href="release-20260901/">release-20260901/</a></td><td align="right">  - </td></tr>
</table>`, map[string]time.Time{"20260926": day(26, 18, 4), "20260901": {}}},
		{"nginx", `<html><body><h1>Index of /releases/24.04/</h1><hr><pre><a href="../">../</a>
<a href="release-20260926/">release-20260926/</a>                                  26-Sep-2026 18:04                   -
<a href="release-20260926.2/">release-20260926.2/</a>                                28-Sep-2026 07:10                   -
</pre><hr></body></html>`, map[string]time.Time{"20260926": day(26, 18, 4), "20260926.2": day(28, 7, 10)}},
		{"lighttpd", `<tr class="d"><td class="n"><a href="release-20260926/">release-20260926</a>/</td><td class="m">2026-Sep-26 18:04:59</td><td class="s">- &nbsp;</td></tr>`,
			map[string]time.Time{"20260926": day(26, 18, 4).Add(59 * time.Second)}},
		{"links only", `<a href='release-20260926/'>x</a><A HREF="./release-20260901/">y</a><a href="release-20260926/">dup</a>`,
			map[string]time.Time{"20260926": {}, "20260901": {}}},
		{"hostile", `<a href="release-2026/">short</a><a href="release-20260926/../">up</a><a href="../release-20260926/">other dir</a>
<a href="/abs/release-20260927/">abs</a><a href="release-20260928">file</a><a href="release-20260929%2F/">escaped slash</a>
<a href="http://evil.example/release-20260930/">remote</a><a href="release-20260931.x/">bad suffix</a>`, map[string]time.Time{}},
	}
	src := ubuntuSource(t)
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := map[string]time.Time{}
			for _, l := range parseListing([]byte(tt.body)) {
				if dir, ok := listedDir(l.Href); ok {
					if s, ok := src.Serial(dir); ok {
						got[s] = l.Date
					}
				}
			}
			if len(got) != len(tt.want) {
				t.Fatalf("serials %v, want %v", got, tt.want)
			}
			for s, d := range tt.want {
				if g, ok := got[s]; !ok || !g.Equal(d) {
					t.Errorf("%s: date %v (listed %v), want %v", s, g, ok, d)
				}
			}
		})
	}
}

func TestListedSerialsDatesAndOrder(t *testing.T) {
	t.Parallel()
	src := ubuntuSource(t)
	body := `<a href="release-20260926.9/">a</a> <a href="release-20260926.10/">b</a> 2026-10-01 12:00 <a href="release-20260926/">c</a>`
	got := listedSerials(parseListing([]byte(body)), src)
	var names []string
	for _, s := range got {
		names = append(names, s.Serial)
	}
	if !slices.Equal(names, []string{"20260926.10", "20260926.9", "20260926"}) {
		t.Fatalf("order %v", names)
	}
	// A listed date wins; without one the serial's own date is used.
	if !got[0].Date.Equal(time.Date(2026, 10, 1, 12, 0, 0, 0, time.UTC)) || !got[2].Date.Equal(time.Date(2026, 9, 26, 0, 0, 0, 0, time.UTC)) {
		t.Errorf("dates %v, %v", got[0].Date, got[2].Date)
	}
	if !strings.HasSuffix(got[0].URL, "/releases/24.04/release-20260926.10/") {
		t.Errorf("URL %s", got[0].URL)
	}
	if d := serialDate("202609261"); !d.IsZero() {
		t.Errorf("serialDate of a 9-digit serial = %v", d)
	}
}

// FuzzSerialListing: any page yields safe, unique serials, newest first,
// at most maxListedLinks of them, and never panics.
func FuzzSerialListing(f *testing.F) {
	f.Add([]byte(`<a href="release-20260901/">release-20260901/</a>        2026-09-01 09:37    -
<a href="release-20260926.1/">x</a> 27-Sep-2026 10:01 <a href="release/">release/</a>`))
	f.Add([]byte(`<a href="release-20260926%2F..%2F/"> <a href='./release-20260926.10/'> 2026-Sep-26 18:04:59 <a href="release-99999999/">`))
	f.Add([]byte(`<a href="release-20260926/">` + strings.Repeat(" 2026-13-45 99:99", 40)))
	src := ubuntuSource(f)
	f.Fuzz(func(t *testing.T, body []byte) {
		links := parseListing(body)
		if len(links) > maxListedLinks {
			t.Fatalf("%d links", len(links))
		}
		serials := listedSerials(links, src)
		seen := map[string]bool{}
		for i, s := range serials {
			if image.CheckSerial(s.Serial) != nil || seen[s.Serial] {
				t.Fatalf("serial %q unsafe or repeated", s.Serial)
			}
			seen[s.Serial] = true
			if !strings.HasPrefix(s.URL, src.IndexURL) || strings.Count(s.URL[len(src.IndexURL):], "/") != 1 {
				t.Fatalf("serial %q has URL %s outside %s", s.Serial, s.URL, src.IndexURL)
			}
			if i > 0 && image.CompareNatural(serials[i-1].Serial, s.Serial) <= 0 {
				t.Fatalf("not newest first: %q before %q", serials[i-1].Serial, s.Serial)
			}
		}
	})
}
