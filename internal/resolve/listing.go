package resolve

import (
	"context"
	"fmt"
	"mime"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"time"
)

// A directory listing is the HTML index page a web server generates for a
// directory (Apache autoindex, nginx autoindex, lighttpd mod_dirlisting).
// Only its links are read, plus the date a listing prints after each one.
// The page is untrusted: it only ever names candidates, and what a
// candidate leads to (a manifest) must still verify.

// maxIndexSize caps a directory listing: Fedora's and Ubuntu's are a few
// KiB. A larger one is refused without being read past the cap.
const maxIndexSize = 4 << 20

// maxListedLinks caps the links read from one directory listing: real ones
// have a few dozen, and a hostile 4 MiB page of empty links would otherwise
// cost tens of MiB of match slices.
const maxListedLinks = 10000

// dateWindow bounds how far after a link its date is looked for.
const dateWindow = 512

var (
	// hrefRE finds link targets in an HTML directory listing.
	hrefRE = regexp.MustCompile(`(?i)href\s*=\s*["']([^"'<>]*)["']`)
	// dateRE finds the modification time listings print: Apache
	// "2026-09-26 09:37", nginx "26-Sep-2026 09:37", lighttpd
	// "2026-Sep-26 09:37:12".
	dateRE = regexp.MustCompile(`\b(?:[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{2}-[A-Za-z]{3}-[0-9]{4}|[0-9]{4}-[A-Za-z]{3}-[0-9]{2})[ T][0-9]{2}:[0-9]{2}(?::[0-9]{2})?\b`)
)

var dateLayouts = []string{
	"2006-01-02 15:04", "2006-01-02 15:04:05", "2006-01-02T15:04", "2006-01-02T15:04:05",
	"02-Jan-2006 15:04", "02-Jan-2006 15:04:05",
	"2006-Jan-02 15:04", "2006-Jan-02 15:04:05",
}

// listedLink is one link of a directory listing.
type listedLink struct {
	// Href is the link target as written (not unescaped).
	Href string
	// Date is the modification time printed after the link, in the
	// server's (unknown) zone read as UTC; zero when there is none.
	Date time.Time
}

// parseListing returns the links of an HTML directory listing, at most
// maxListedLinks, each with the date printed after it (before the next
// link, within dateWindow bytes). It never fails: a page that is not a
// listing simply has no useful links.
func parseListing(body []byte) []listedLink {
	locs := hrefRE.FindAllSubmatchIndex(body, maxListedLinks)
	links := make([]listedLink, 0, len(locs))
	for i, loc := range locs {
		end := min(len(body), loc[1]+dateWindow)
		if i+1 < len(locs) {
			end = min(end, locs[i+1][0])
		}
		l := listedLink{Href: string(body[loc[2]:loc[3]])}
		if d := dateRE.Find(body[loc[1]:end]); d != nil {
			l.Date = parseListingDate(string(d))
		}
		links = append(links, l)
	}
	return links
}

func parseListingDate(s string) time.Time {
	for _, layout := range dateLayouts {
		if t, err := time.Parse(layout, s); err == nil {
			return t
		}
	}
	return time.Time{}
}

// listedNames returns the plain file names an HTML directory listing links
// to, at most maxListedLinks links considered.
func listedNames(body []byte) []string {
	var names []string
	for _, l := range parseListing(body) {
		if name, ok := listedName(l.Href); ok {
			names = append(names, name)
		}
	}
	return names
}

// listedName returns the file name a listing link points to, if it is a
// plain file in the same directory.
func listedName(href string) (string, bool) {
	name, dir, ok := listedEntry(href)
	return name, ok && !dir
}

// listedDir returns the subdirectory name a listing link points to (the
// link ends in "/"), if it is a plain name in the same directory.
func listedDir(href string) (string, bool) {
	name, dir, ok := listedEntry(href)
	return name, ok && dir
}

// listedEntry reads a relative link to an entry of the listed directory:
// its unescaped name, whether it is a directory (trailing "/"), and false
// for anything else (parent, absolute or nested links, sort links).
func listedEntry(href string) (name string, dir, ok bool) {
	href, _, _ = strings.Cut(href, "?")
	href, _, _ = strings.Cut(href, "#")
	href = strings.TrimPrefix(href, "./")
	href, dir = strings.CutSuffix(href, "/")
	name, err := url.PathUnescape(href)
	if err != nil || !plainFileName(name) {
		return "", false, false
	}
	return name, dir, true
}

// fetchListing fetches a directory listing: HTML only, at most maxIndexSize.
func (r *Resolver) fetchListing(ctx context.Context, u string) ([]byte, *fetchError) {
	return r.fetch(ctx, u, maxIndexSize, requireHTML)
}

// requireHTML refuses a response that is not an HTML page before its body
// is read: a listing URL that answers with a disk image or a JSON error is
// a misconfigured mirror, not a listing.
func requireHTML(resp *http.Response) error {
	ct := resp.Header.Get("Content-Type")
	if ct == "" {
		return fmt.Errorf("%w: the server sent no Content-Type", ErrNotListing)
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil || (mt != "text/html" && mt != "application/xhtml+xml") {
		return fmt.Errorf("%w: Content-Type %q", ErrNotListing, ct)
	}
	return nil
}
