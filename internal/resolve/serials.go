package resolve

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
)

// Canonical validates spec against the catalog and returns it canonically
// spelled: a codename becomes its version (catalog.Catalog.Canonical). Its
// errors are the catalog's.
func (r *Resolver) Canonical(spec image.Spec) (image.Spec, error) {
	return r.cat.Canonical(spec)
}

// Serial is one build of a version that a catalog's listing offers.
type Serial struct {
	Serial string `json:"serial"`
	// Date is when the listing says the build's directory last changed or,
	// when it prints no date, the date the serial starts with (Ubuntu's and
	// Debian's do: YYYYMMDD); zero when neither is known.
	Date time.Time `json:"date,omitzero"`
	// URL is the build's directory.
	URL string `json:"url"`
	// Unpinned is true for the one build of a mirror in the classic
	// layout: URL is the directory repointed at each publication (release/),
	// Serial what its build-info file says it holds.
	Unpinned bool `json:"unpinned,omitempty"`
}

// Serials lists the builds published for spec's version (its serial, if
// any, is ignored), newest first. An image whose catalog entry has no
// serials fails with an error wrapping catalog.ErrNoSerials; a listing
// without any fails with ErrNoMatch. A mirror in the classic layout (no
// build directory, only the catalog's unpinned one) lists that build alone,
// Unpinned set, or fails with an *UnpinnedError when its build-info names
// no serial. Errors are *Error.
func (r *Resolver) Serials(ctx context.Context, spec image.Spec) ([]Serial, error) {
	src, err := r.cat.Serials(spec)
	if err != nil {
		return nil, &Error{Spec: spec, Op: OpPlan, Err: err}
	}
	body, ferr := r.fetchListing(ctx, src.IndexURL)
	if ferr != nil {
		return nil, &Error{Spec: src.Spec, Op: OpSerials, URL: src.IndexURL, Retryable: ferr.retryable, Err: r.explainUnpublishedVersion(ctx, src, ferr.err)}
	}
	links := parseListing(body)
	serials := listedSerials(links, src)
	if len(serials) == 0 {
		if s, ok, err := r.unpinnedSerial(ctx, src, links); ok {
			if err != nil {
				return nil, err
			}
			return []Serial{s}, nil
		}
		return nil, &Error{Spec: src.Spec, Op: OpSerials, URL: src.IndexURL,
			Err: fmt.Errorf("%w: no build directory among the listing's %d links", ErrNoMatch, len(links))}
	}
	return serials, nil
}

// listedSerials picks the serial directories out of a listing's links,
// newest first, each once.
func listedSerials(links []listedLink, src catalog.SerialSource) []Serial {
	var out []Serial
	seen := map[string]bool{}
	for _, l := range links {
		dir, ok := listedDir(l.Href)
		if !ok {
			continue
		}
		s, ok := src.Serial(dir)
		if !ok || seen[s] {
			continue
		}
		seen[s] = true
		date := l.Date
		if date.IsZero() {
			date = serialDate(s)
		}
		out = append(out, Serial{Serial: s, Date: date, URL: src.IndexURL + url.PathEscape(dir) + "/"})
	}
	slices.SortFunc(out, func(a, b Serial) int { return image.CompareNatural(b.Serial, a.Serial) })
	return out
}

// serialDate reads a serial's leading YYYYMMDD, if it has one.
func serialDate(s string) time.Time {
	if len(s) < 8 {
		return time.Time{}
	}
	t, err := time.Parse("20060102", s[:8])
	if err != nil || (len(s) > 8 && isDigit(s[8])) {
		return time.Time{}
	}
	return t
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// explainMissing turns a 404 for a file of a requested serial into an
// *UnknownSerialError naming the serials that exist (listed, or the listing's
// error lerr), when the serial is not among them; a mirror whose build is
// unpinned says so; any other error is returned as it is.
func (r *Resolver) explainMissing(spec image.Spec, err error, serials []Serial, lerr error) error {
	var re *Error
	if !errors.As(err, &re) {
		return err
	}
	var ue *UnpinnedError
	if errors.As(lerr, &ue) {
		return &Error{Spec: spec, Op: re.Op, URL: re.URL, Err: fmt.Errorf("serial %s cannot be pinned: %w", image.Printable(spec.Serial), ue)}
	}
	if lerr != nil {
		return err
	}
	names := make([]string, 0, len(serials))
	for _, s := range serials {
		if s.Serial == spec.Serial {
			return err // published but incomplete: the 404 says what is missing
		}
		names = append(names, s.Serial)
	}
	src, _ := r.cat.Serials(spec) // succeeded inside r.Serials
	return &Error{Spec: spec, Op: re.Op, URL: re.URL,
		Err: &UnknownSerialError{Spec: spec, IndexURL: src.IndexURL, Available: names}}
}

// ErrUnknownSerial: a requested serial is not published (see *UnknownSerialError).
var ErrUnknownSerial = errors.New("no such serial")

// UnknownSerialError is a request for a serial the catalog's listing does
// not offer; Available lists those it does, newest first.
type UnknownSerialError struct {
	Spec      image.Spec
	IndexURL  string
	Available []string
}

// maxNamedSerials bounds how many available serials an error message lists.
const maxNamedSerials = 10

func (e *UnknownSerialError) Error() string {
	list := e.Available
	more := ""
	if len(list) > maxNamedSerials {
		more = fmt.Sprintf(" and %d older", len(list)-maxNamedSerials)
		list = list[:maxNamedSerials]
	}
	return fmt.Sprintf("serial %s of %s %s is not published at %s (available, newest first: %s%s)",
		image.Printable(e.Spec.Serial), e.Spec.Distro, e.Spec.Version, e.IndexURL, strings.Join(list, ", "), more)
}

// Is makes errors.Is(err, ErrUnknownSerial) true.
func (e *UnknownSerialError) Is(target error) bool { return target == ErrUnknownSerial }

// ErrRolledBack: the newest serial offered is older than one already
// verified (see *RolledBackError).
var ErrRolledBack = errors.New("rolled back")

// RolledBackError refuses to go back silently to an older build: the
// mirror's newest serial (Offered) is older than one verified before
// (Verified), so the mirror is stale or was rolled back.
type RolledBackError struct {
	Spec       image.Spec
	Offered    string
	Verified   string
	VerifiedAt time.Time
}

func (e *RolledBackError) Error() string {
	when := ""
	if !e.VerifiedAt.IsZero() {
		when = " on " + e.VerifiedAt.UTC().Format(time.DateOnly)
	}
	return fmt.Sprintf("%s %s %s rolled back: the newest serial the mirror offers, %s, is older than %s, which was verified%s "+
		"(the mirror is stale or was rolled back, and %s is not in the cache); to use %s on purpose, pin it with --serial %s (or \"serial\" in the request's spec)",
		e.Spec.Distro, e.Spec.Version, e.Spec.Arch, e.Offered, e.Verified, when, e.Verified, e.Offered, e.Offered)
}

// Is makes errors.Is(err, ErrRolledBack) true.
func (e *RolledBackError) Is(target error) bool { return target == ErrRolledBack }
