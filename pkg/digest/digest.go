// Package digest names content by a cryptographic hash: an algorithm and a
// lower-case hex string, written "sha256:<hex>" in text form.
package digest

import (
	"crypto/sha256"
	"crypto/sha512"
	"errors"
	"fmt"
	"hash"
	"strings"
)

// Algorithm is a hash algorithm accepted for content verification.
type Algorithm string

// Accepted algorithms. MD5 and SHA-1 are deliberately absent: they are
// refused wherever a manifest offers them.
const (
	SHA256 Algorithm = "sha256"
	SHA512 Algorithm = "sha512"
)

// ErrUnsupportedAlgorithm is returned for an algorithm other than SHA-256 or SHA-512.
var ErrUnsupportedAlgorithm = errors.New("unsupported digest algorithm")

// ErrInvalid is returned for a malformed digest string.
var ErrInvalid = errors.New("invalid digest")

// HexLen is the length of a hex digest for the algorithm, or 0 if unknown.
func (a Algorithm) HexLen() int {
	switch a {
	case SHA256:
		return 64
	case SHA512:
		return 128
	}
	return 0
}

// New returns a fresh hash for the algorithm.
func (a Algorithm) New() (hash.Hash, error) {
	switch a {
	case SHA256:
		return sha256.New(), nil
	case SHA512:
		return sha512.New(), nil
	}
	return nil, fmt.Errorf("%w: %q", ErrUnsupportedAlgorithm, string(a))
}

// Digest is an algorithm and its lower-case hex value. The zero value means "unknown".
type Digest struct {
	Algorithm Algorithm
	Hex       string
}

// New validates and normalises (lower-cases) a digest.
func New(alg Algorithm, hexValue string) (Digest, error) {
	alg = Algorithm(strings.ToLower(string(alg)))
	n := alg.HexLen()
	if n == 0 {
		return Digest{}, fmt.Errorf("%w: %q", ErrUnsupportedAlgorithm, string(alg))
	}
	if len(hexValue) != n {
		return Digest{}, fmt.Errorf("%w: %s value has %d hex digits, want %d", ErrInvalid, alg, len(hexValue), n)
	}
	b := []byte(hexValue)
	for i, c := range b {
		switch {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f':
		case c >= 'A' && c <= 'F':
			b[i] = c + ('a' - 'A')
		default:
			return Digest{}, fmt.Errorf("%w: %s value has non-hex character %q", ErrInvalid, alg, c)
		}
	}
	return Digest{Algorithm: alg, Hex: string(b)}, nil
}

// Parse reads the text form "algorithm:hex".
func Parse(s string) (Digest, error) {
	alg, hexValue, ok := strings.Cut(s, ":")
	if !ok {
		return Digest{}, fmt.Errorf("%w: %q has no algorithm prefix", ErrInvalid, s)
	}
	return New(Algorithm(alg), hexValue)
}

// FromHash builds a digest from a finished hash of the given algorithm.
func FromHash(alg Algorithm, h hash.Hash) Digest {
	return Digest{Algorithm: alg, Hex: fmt.Sprintf("%x", h.Sum(nil))}
}

// IsZero reports whether the digest is unset.
func (d Digest) IsZero() bool { return d.Algorithm == "" && d.Hex == "" }

// String returns "algorithm:hex".
func (d Digest) String() string {
	if d.IsZero() {
		return ""
	}
	return string(d.Algorithm) + ":" + d.Hex
}

// MarshalText implements encoding.TextMarshaler ("sha256:<hex>").
func (d Digest) MarshalText() ([]byte, error) { return []byte(d.String()), nil }

// UnmarshalText implements encoding.TextUnmarshaler; the empty string is the zero digest.
func (d *Digest) UnmarshalText(b []byte) error {
	if len(b) == 0 {
		*d = Digest{}
		return nil
	}
	v, err := Parse(string(b))
	if err != nil {
		return err
	}
	*d = v
	return nil
}
