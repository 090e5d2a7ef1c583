package qcow2

import (
	"errors"
	"fmt"
)

// Sentinel errors. Every error returned by this package wraps exactly one of
// ErrNotQcow2, ErrUnsupported or ErrMalformed (plus an I/O cause where there
// is one), so callers can decide between "wrong input", "refused" and "broken"
// with errors.Is.
var (
	// ErrNotQcow2 means the input is another image format (see FormatError).
	ErrNotQcow2 = errors.New("not a qcow2 image")
	// ErrUnsupported means a valid qcow2 feature this reader refuses on purpose.
	ErrUnsupported = errors.New("unsupported qcow2 feature")
	// ErrMalformed means the image violates the qcow2 specification or is truncated.
	ErrMalformed = errors.New("malformed qcow2 image")

	// Specific refusals; each is wrapped together with ErrUnsupported.
	ErrBackingFile      = errors.New("backing file")
	ErrEncrypted        = errors.New("encryption")
	ErrExternalDataFile = errors.New("external data file")
	ErrCorruptBit       = errors.New("corrupt bit set")
	ErrUnknownFeature   = errors.New("unknown incompatible feature")
)

// FormatError reports an input whose magic identifies another disk image format.
type FormatError struct {
	Format Format
}

func (e *FormatError) Error() string {
	if e.Format == FormatRaw {
		// "raw" is only what is left when no magic matches: say what is missing.
		return fmt.Sprintf("not a qcow2 image: no qcow2 magic (%q) at offset 0", qcowMagic)
	}
	return fmt.Sprintf("%s image, not qcow2", e.Format)
}

func (e *FormatError) Unwrap() error { return ErrNotQcow2 }

// Permanent reports that the error cannot pass with time: the bytes are what
// they are. (Every error type of this package says so; the pipeline asks.)
func (e *FormatError) Permanent() bool { return true }

// FeatureError reports a qcow2 feature that this reader refuses: Kind is one
// of ErrBackingFile, ErrEncrypted, ErrExternalDataFile, ErrCorruptBit or
// ErrUnknownFeature; Detail names the instance (backing file name, cipher, bits).
type FeatureError struct {
	Kind   error
	Detail string
}

func (e *FeatureError) Error() string {
	if e.Detail == "" {
		return "unsupported qcow2 feature: " + e.Kind.Error()
	}
	return fmt.Sprintf("unsupported qcow2 feature: %s %s", e.Kind, e.Detail)
}

func (e *FeatureError) Unwrap() []error { return []error{ErrUnsupported, e.Kind} }

// Permanent reports that the refusal cannot pass with time.
func (e *FeatureError) Permanent() bool { return true }

// MalformedError reports a structural violation. What names the structure
// ("header", "L1 table", "L2 entry for guest offset 0x10000", …), Reason the
// broken rule, and Err an optional underlying cause (an I/O or decoder error).
type MalformedError struct {
	What   string
	Reason string
	Err    error
}

func (e *MalformedError) Error() string {
	msg := "malformed qcow2: " + e.What + ": " + e.Reason
	if e.Err != nil {
		msg += ": " + e.Err.Error()
	}
	return msg
}

func (e *MalformedError) Unwrap() []error {
	if e.Err == nil {
		return []error{ErrMalformed}
	}
	return []error{ErrMalformed, e.Err}
}

// Permanent reports that the violation cannot pass with time: reading the
// same (digest-checked) bytes again finds it again.
func (e *MalformedError) Permanent() bool { return true }

func malformed(what, format string, args ...any) error {
	return &MalformedError{What: what, Reason: fmt.Sprintf(format, args...)}
}
