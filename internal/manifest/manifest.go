// Package manifest parses the checksum manifests distributions publish
// beside their images (SHA256SUMS, SHA512SUMS, CHECKSUM, <image>.sha256):
// GNU coreutils text and binary lines, single-space lines, BSD and OpenSSL
// tags, escaped names and Fedora's commented CHECKSUM files, detected line
// by line.
//
// It is deliberately strict where laxness is dangerous: a line without a
// name is an error, never an entry matching ""; names are compared whole
// (a basename never matches across folders); MD5 and SHA-1 are refused; a
// name listed twice with different digests fails the whole manifest. It
// does not check signatures: parse only the verified plaintext.
package manifest

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"

	"github.com/vmprep/vmprep/pkg/digest"
)

// DefaultMaxSize caps the manifest read by Parse unless WithMaxSize says otherwise.
const DefaultMaxSize = 16 << 20

var (
	// ErrTooLarge: the input exceeds the size cap.
	ErrTooLarge = errors.New("manifest too large")
	// ErrNoEntries: the manifest lists no file with a usable digest.
	ErrNoEntries = errors.New("manifest lists no entries")
	// ErrEntryNotFound: Lookup found no entry under that exact name.
	ErrEntryNotFound = errors.New("no manifest entry for file")
	// ErrConflict: one name is listed with two different digests.
	ErrConflict = errors.New("conflicting digests for one file")
	// ErrWeakAlgorithm: a digest uses MD5 or SHA-1, which are refused.
	ErrWeakAlgorithm = errors.New("weak digest algorithm refused")
)

// Entry is one file and its expected digest.
type Entry struct {
	Name   string
	Digest digest.Digest
}

// Manifest is a parsed checksum manifest. It is immutable once parsed and
// safe for concurrent use.
type Manifest struct {
	entries []Entry
	// lines holds the line each entry was first listed on, for conflict
	// errors while parsing; dropped afterwards.
	lines []int
	// byName maps a normalised name to its entries, at most one per algorithm.
	byName map[string]slot
	// unusable records names listed only with refused or unsupported
	// algorithms, so Lookup can say why rather than "not found".
	unusable map[string]error
	sizes    map[string]int64
}

// Option configures Parse.
type Option func(*options)

type options struct {
	maxSize    int64
	singleFile string
	single     bool
}

// WithMaxSize caps the bytes Parse reads; larger input fails with ErrTooLarge.
// A cap of zero or less keeps the default.
func WithMaxSize(n int64) Option {
	return func(o *options) {
		if n > 0 {
			o.maxSize = n
		}
	}
}

// WithSingleFile parses a per-file checksum file (Alpine's <image>.sha512,
// openSUSE's <image>.sha256): exactly one digest, bare or on a normal line,
// bound to name whatever name the line itself gives (openSUSE lists the
// versioned build name while the file is published under an alias).
func WithSingleFile(name string) Option {
	return func(o *options) {
		o.singleFile = name
		o.single = true
	}
}

// SyntaxError reports a line that is not a checksum line.
type SyntaxError struct {
	Line   int    // 1-based line number
	Text   string // the offending line, truncated to maxErrorText bytes
	Reason string
}

func (e *SyntaxError) Error() string {
	return fmt.Sprintf("manifest line %d: %s: %q", e.Line, e.Reason, e.Text)
}

// maxErrorText bounds the line quoted in a SyntaxError: hostile input must
// not turn into megabyte-long log lines.
const maxErrorText = 120

func syntaxError(line int, text, reason string) *SyntaxError {
	if len(text) > maxErrorText {
		text = text[:maxErrorText] + "…"
	}
	return &SyntaxError{Line: line, Text: text, Reason: reason}
}

// Parse reads a checksum manifest. The format is detected per line, so a
// file may mix styles. Errors name the line.
func Parse(r io.Reader, opts ...Option) (*Manifest, error) {
	o := options{maxSize: DefaultMaxSize}
	for _, opt := range opts {
		opt(&o)
	}
	if o.single && cleanName(o.singleFile) == "" {
		return nil, fmt.Errorf("parse manifest: WithSingleFile(%q): empty file name", o.singleFile)
	}
	data, err := io.ReadAll(io.LimitReader(r, o.maxSize+1))
	if err != nil {
		return nil, fmt.Errorf("read manifest: %w", err)
	}
	if int64(len(data)) > o.maxSize {
		return nil, fmt.Errorf("read manifest: %w: more than %d bytes", ErrTooLarge, o.maxSize)
	}
	return parse(data, &o)
}

// parsed is one checksum line before it is added to the manifest.
type parsed struct {
	name     string
	bare     bool // a digest with no name: valid only in single-file mode
	digest   digest.Digest
	unusable error // set instead of digest for weak or unsupported algorithms
}

// slot holds 1 + the index in entries of a name's SHA-256 and SHA-512
// digests; 0 means none.
type slot struct{ sha256, sha512 int }

func (s *slot) at(alg digest.Algorithm) *int {
	if alg == digest.SHA512 {
		return &s.sha512
	}
	return &s.sha256
}

func parse(data []byte, o *options) (*Manifest, error) {
	// Presize for the lines that could be entries: a usable line holds at
	// least 64 hex digits, a separator and a name, so blank or junk input
	// cannot inflate the estimate beyond len(data)/66.
	hint := min(bytes.Count(data, []byte{'\n'})+1, len(data)/66+1)
	m := &Manifest{
		entries:  make([]Entry, 0, hint),
		lines:    make([]int, 0, hint),
		byName:   make(map[string]slot, hint),
		unusable: make(map[string]error),
	}
	entryLines := 0
	var firstUnusable error

	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")) // a UTF-8 BOM from Windows tools
	for n := 1; len(data) > 0; n++ {
		var raw []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			raw, data = data[:i], data[i+1:]
		} else {
			raw, data = data, nil // a last line without newline still counts
		}
		line := string(bytes.TrimSuffix(raw, []byte("\r")))

		trimmed := strings.TrimLeft(line, " \t")
		if trimmed == "" {
			continue
		}
		if trimmed[0] == '#' {
			if name, size, ok := sizeComment(trimmed); ok {
				if m.sizes == nil {
					m.sizes = make(map[string]int64)
				}
				m.sizes[name] = size
			}
			continue
		}
		p, err := parseLine(trimmed, n)
		if err != nil {
			return nil, err
		}
		entryLines++
		if o.single {
			if entryLines > 1 {
				return nil, syntaxError(n, line, "per-file checksum file lists a second digest")
			}
			p.name = o.singleFile
		} else if p.bare {
			return nil, syntaxError(n, line, "digest without a file name")
		}
		name := cleanName(p.name)
		if name == "" {
			return nil, syntaxError(n, line, "empty file name")
		}
		if p.unusable != nil {
			if firstUnusable == nil {
				firstUnusable = fmt.Errorf("manifest line %d: %w", n, p.unusable)
			}
			if _, ok := m.unusable[name]; !ok {
				m.unusable[name] = p.unusable
			}
			continue
		}
		sl := m.byName[name]
		if i := *sl.at(p.digest.Algorithm) - 1; i >= 0 {
			if have := m.entries[i].Digest; have != p.digest {
				return nil, fmt.Errorf("manifest line %d: %w: %q is %s here but %s on line %d",
					n, ErrConflict, name, p.digest, have, m.lines[i])
			}
			continue
		}
		m.entries = append(m.entries, Entry{Name: name, Digest: p.digest})
		m.lines = append(m.lines, n)
		*sl.at(p.digest.Algorithm) = len(m.entries)
		m.byName[name] = sl
	}
	if len(m.entries) == 0 {
		if firstUnusable != nil {
			return nil, fmt.Errorf("%w: %w", ErrNoEntries, firstUnusable)
		}
		return nil, ErrNoEntries
	}
	if len(m.unusable) == 0 {
		m.unusable = nil
	}
	m.lines = nil // only conflict messages needed them
	return m, nil
}

// Entries returns the entries in the order first listed, one per name and
// algorithm. The slice is a copy.
func (m *Manifest) Entries() []Entry {
	out := make([]Entry, len(m.entries))
	copy(out, m.entries)
	return out
}

// Lookup returns the digest listed for name. "./x" and "x" are the same
// name, but "x" never matches "dir/x". When a name is listed with both
// SHA-256 and SHA-512, the SHA-512 digest is returned. A name listed only
// with MD5 or SHA-1 fails with ErrWeakAlgorithm.
func (m *Manifest) Lookup(name string) (digest.Digest, error) {
	clean := cleanName(name)
	if clean == "" {
		return digest.Digest{}, fmt.Errorf("%w: empty name %q", ErrEntryNotFound, name)
	}
	if sl, ok := m.byName[clean]; ok {
		if sl.sha512 > 0 {
			return m.entries[sl.sha512-1].Digest, nil
		}
		return m.entries[sl.sha256-1].Digest, nil
	}
	if err, ok := m.unusable[clean]; ok {
		return digest.Digest{}, fmt.Errorf("manifest entry %q: %w", clean, err)
	}
	return digest.Digest{}, fmt.Errorf("%w: %q", ErrEntryNotFound, name)
}

// Size returns the size a Fedora-style "# name: N bytes" comment gives for
// name. Such comments are unauthenticated hints beside the digest; use them
// to refuse an oversized download early, never instead of the digest.
func (m *Manifest) Size(name string) (int64, bool) {
	n, ok := m.sizes[cleanName(name)]
	return n, ok
}

// cleanName removes leading "./" so that "./x" and "x" compare equal. It
// does nothing else: folders stay significant.
func cleanName(name string) string {
	for strings.HasPrefix(name, "./") {
		name = name[2:]
	}
	return name
}

// sizeComment recognises Fedora's "# <name>: <N> bytes".
func sizeComment(line string) (string, int64, bool) {
	rest, ok := strings.CutPrefix(line, "# ")
	if !ok {
		return "", 0, false
	}
	rest, ok = strings.CutSuffix(rest, " bytes")
	if !ok {
		return "", 0, false
	}
	i := strings.LastIndex(rest, ": ")
	if i <= 0 {
		return "", 0, false
	}
	size, err := strconv.ParseInt(rest[i+2:], 10, 64)
	if err != nil || size < 0 {
		return "", 0, false
	}
	name := cleanName(rest[:i])
	if name == "" {
		return "", 0, false
	}
	return name, size, true
}
