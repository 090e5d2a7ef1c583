package download

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Sentinel errors, matched with errors.Is through *Error.
var (
	// ErrDigestMismatch: the downloaded bytes do not hash to Request.Expected,
	// twice in a row (the second time after a fresh download from zero).
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrSizeMismatch: the server sent or announced a size other than Request.ExpectedSize.
	ErrSizeMismatch = errors.New("size mismatch")
	// ErrTooLarge: the file exceeds the configured maximum size (WithMaxSize).
	ErrTooLarge = errors.New("file too large")
)

// Error describes a failed download. Retryable says whether the last failure
// was transient: a Fetch returning a retryable Error gave up because its
// retry budget ran out, and a later Fetch may succeed (and resumes). A
// cancelled or expired ctx gives a non-retryable Error that wraps ctx's error.
type Error struct {
	Name       string // asset name from the Request, may be empty
	URL        string
	Op         string // what failed: "request", "read body", "write", "verify", ...
	StatusCode int    // HTTP status, 0 if none
	Retryable  bool
	Attempts   int // attempts made before giving up, 0 if unknown
	Err        error

	retryAfter time.Duration // server's Retry-After, 0 if none
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString("download")
	if e.Name != "" {
		fmt.Fprintf(&b, " %s", e.Name)
	}
	fmt.Fprintf(&b, " from %s: %s", e.URL, e.Op)
	if e.StatusCode != 0 {
		fmt.Fprintf(&b, ": HTTP %d", e.StatusCode)
	}
	if e.Err != nil {
		fmt.Fprintf(&b, ": %v", e.Err)
	}
	if e.Retryable {
		b.WriteString(" (retryable")
	} else {
		b.WriteString(" (permanent")
	}
	switch {
	case e.Attempts == 1:
		b.WriteString(", gave up after 1 attempt")
	case e.Attempts > 1:
		fmt.Fprintf(&b, ", gave up after %d attempts", e.Attempts)
	}
	b.WriteString(")")
	return b.String()
}

func (e *Error) Unwrap() error { return e.Err }

// Permanent reports whether a later Fetch cannot do better: the request,
// the server's answer or the content is wrong. A retryable Error only ran
// out of this Fetch's retry budget.
func (e *Error) Permanent() bool { return !e.Retryable }

// cause is the failure without the URL and the verdict, for quoting it in
// a later error.
func (e *Error) cause() string {
	s := e.Op
	if e.StatusCode != 0 {
		s += fmt.Sprintf(": HTTP %d", e.StatusCode)
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// IsRetryable reports whether err is an *Error marked retryable.
func IsRetryable(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Retryable
}
