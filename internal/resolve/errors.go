package resolve

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/vmprep/vmprep/internal/neterr"
	"github.com/vmprep/vmprep/pkg/image"
)

// Op names the step of a resolution that failed.
type Op string

// Steps of a resolution.
const (
	OpPlan      Op = "plan"
	OpIndex     Op = "list directory"
	OpSerials   Op = "list serials"
	OpManifest  Op = "fetch manifest"
	OpSignature Op = "fetch signature"
	OpVerify    Op = "verify signature"
	OpParse     Op = "parse manifest"
	OpLookup    Op = "look up"
)

// Sentinel errors, testable with errors.Is.
var (
	// ErrNotFound: the server answered 404 or 410.
	ErrNotFound = errors.New("not found")
	// ErrTooLarge: a response exceeded its size cap.
	ErrTooLarge = errors.New("response too large")
	// ErrNoMatch: nothing in a directory listing or manifest matched the
	// catalog's name pattern.
	ErrNoMatch = errors.New("no name matches the pattern")
	// ErrInsecureRedirect: an https URL redirected to plain http.
	ErrInsecureRedirect = errors.New("refused redirect from https to http")
	// ErrNotListing: a directory listing URL answered with something other
	// than an HTML page.
	ErrNotListing = errors.New("not an HTML directory listing")
)

// Error is a failed resolution. URL is the manifest (or listing) concerned;
// for signature failures it is the manifest the signature covers.
type Error struct {
	Spec image.Spec
	Op   Op
	URL  string
	// Retryable is true for transient failures (5xx, 429, timeouts, dropped
	// connections) that persisted through the resolver's own retries: trying
	// again later may succeed. False means the input or the server's content
	// is wrong (404, bad signature, missing entry, bad spec).
	Retryable bool
	Err       error
}

func (e *Error) Error() string {
	msg := "resolve " + e.Spec.String() + ": " + string(e.Op)
	if e.URL != "" {
		msg += " " + e.URL
	}
	msg += ": " + e.Err.Error()
	if errors.Is(e.Err, ErrNotFound) {
		msg += mirrorHint(e.URL)
	}
	return msg
}

// mirrorHint explains a 404 whose URL repeats a path element, the mark of a
// mirror given as the directory a catalog's paths start with (…/releases/)
// rather than the root that contains it.
func mirrorHint(u string) string {
	parsed, err := url.Parse(u)
	if err != nil {
		return ""
	}
	segs := strings.Split(strings.Trim(parsed.Path, "/"), "/")
	for i := 1; i < len(segs); i++ {
		if segs[i] != "" && segs[i] == segs[i-1] {
			root := *parsed
			root.Path = "/" + strings.Join(segs[:i], "/") + "/"
			root.Path = strings.TrimSuffix(root.Path, segs[i]+"/")
			return fmt.Sprintf(" (the URL repeats %q: --mirror must be the root that contains %s/…, e.g. %s, not the %s/ directory itself)",
				segs[i]+"/"+segs[i], segs[i], root.String(), segs[i])
		}
	}
	return ""
}

func (e *Error) Unwrap() error { return e.Err }

// Permanent reports whether trying again later cannot help (see Retryable).
func (e *Error) Permanent() bool { return !e.Retryable }

// IsRetryable reports whether err is a resolution error worth retrying later.
func IsRetryable(err error) bool {
	var re *Error
	return errors.As(err, &re) && re.Retryable
}

// StatusError is an unexpected HTTP status.
type StatusError struct {
	Code   int
	Status string
	// RetryAfter is the wait the server asked for (Retry-After), or 0.
	RetryAfter time.Duration
}

func (e *StatusError) Error() string { return "HTTP " + e.Status }

// Is makes 404 and 410 match ErrNotFound.
func (e *StatusError) Is(target error) bool {
	return target == ErrNotFound && (e.Code == http.StatusNotFound || e.Code == http.StatusGone)
}

// transient reports whether the status is worth retrying.
func (e *StatusError) transient() bool {
	switch e.Code {
	case http.StatusRequestTimeout, http.StatusTooEarly, http.StatusTooManyRequests:
		return true
	}
	return e.Code >= 500 && e.Code != http.StatusNotImplemented && e.Code != http.StatusHTTPVersionNotSupported
}

func newStatusError(resp *http.Response) *StatusError {
	status := resp.Status
	if status == "" {
		status = fmt.Sprint(resp.StatusCode)
	}
	return &StatusError{Code: resp.StatusCode, Status: status, RetryAfter: neterr.RetryAfter(resp.Header.Get("Retry-After"), time.Now())}
}
