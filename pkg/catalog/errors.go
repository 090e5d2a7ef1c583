package catalog

import (
	"errors"
	"fmt"
	"strings"

	"github.com/vmprep/vmprep/pkg/image"
)

// Sentinel errors, testable with errors.Is.
var (
	// ErrInvalidSpec: a distro, version or arch is empty, too long, or holds
	// characters that could escape a URL path or the cache (image.ErrInvalidSpec).
	ErrInvalidSpec = image.ErrInvalidSpec
	// ErrUnknownDistro: no catalog entry for the distro (see *UnknownDistroError).
	ErrUnknownDistro = errors.New("unknown distro")
	// ErrUnsupportedDistro: the distro is known but cannot be prepared (see *UnsupportedError).
	ErrUnsupportedDistro = errors.New("unsupported distro")
	// ErrUnknownVersion: the distro has no such version.
	ErrUnknownVersion = errors.New("unknown version")
	// ErrUnsupportedArch: the distro publishes no image for the architecture.
	ErrUnsupportedArch = errors.New("unsupported architecture")
	// ErrNoTrustedKey: the distro signs its manifests but no key to check
	// them is configured, and unsigned resolution was not allowed.
	ErrNoTrustedKey = errors.New("no trusted signing key")
	// ErrInvalidCatalog: a catalog file (or option) is malformed.
	ErrInvalidCatalog = errors.New("invalid catalog")
	// ErrNoSerials: a serial was given for a distro whose catalog entry
	// publishes none (each resolution takes the build published then).
	ErrNoSerials = errors.New("no serials")
	// ErrSerialRequired: Plan was asked for an image whose catalog entry has
	// serials without naming one; Serials says where to list them.
	ErrSerialRequired = errors.New("a serial is required")
)

// UnknownDistroError reports a distro no catalog entry describes.
type UnknownDistroError struct {
	Distro    string
	Supported []string
}

func (e *UnknownDistroError) Error() string {
	return fmt.Sprintf("catalog: unknown distro %q (supported: %s)", e.Distro, strings.Join(e.Supported, ", "))
}

// Is makes errors.Is(err, ErrUnknownDistro) true.
func (e *UnknownDistroError) Is(target error) bool { return target == ErrUnknownDistro }

// UnsupportedError reports a distro that is known but cannot be prepared,
// why, and what to do instead.
type UnsupportedError struct {
	Distro  string
	Reason  string
	Instead string
}

func (e *UnsupportedError) Error() string {
	msg := fmt.Sprintf("catalog: %s is not supported: %s", e.Distro, e.Reason)
	if e.Instead != "" {
		msg += "; instead: " + e.Instead
	}
	return msg
}

// Is makes errors.Is(err, ErrUnsupportedDistro) true.
func (e *UnsupportedError) Is(target error) bool { return target == ErrUnsupportedDistro }
