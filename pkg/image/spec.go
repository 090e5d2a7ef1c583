package image

import (
	"fmt"
	"strconv"
	"strings"
)

// MaxNameLen bounds a distro or version: longer values are never legitimate
// and would only bloat URLs, cache paths and error messages.
const MaxNameLen = 64

// Normalize returns the spec in canonical form: distro and version
// lower-cased and validated, arch parsed (empty means the host's). A
// distro or version must match [a-z0-9][a-z0-9._-]{0,63} and hold no "..",
// so it can never name a path outside a cache directory or URL prefix.
func (s Spec) Normalize() (Spec, error) {
	distro, err := CheckName("distro", s.Distro)
	if err != nil {
		return Spec{}, err
	}
	version, err := CheckName("version", s.Version)
	if err != nil {
		return Spec{}, err
	}
	arch := HostArch()
	if s.Arch != "" {
		if arch, err = ParseArch(string(s.Arch)); err != nil {
			return Spec{}, err
		}
	}
	if s.Serial != "" {
		if err := CheckSerial(s.Serial); err != nil {
			return Spec{}, err
		}
	}
	return Spec{Distro: distro, Version: version, Arch: arch, Serial: s.Serial}, nil
}

// String renders the spec as "distro version arch", followed by
// "serial S" when one is set.
func (s Spec) String() string {
	out := strings.TrimSpace(fmt.Sprintf("%s %s %s", Printable(s.Distro), Printable(s.Version), Printable(string(s.Arch))))
	if s.Serial != "" {
		out += " serial " + Printable(s.Serial)
	}
	return out
}

// CheckSerial accepts a serial that can stand as one URL path element and
// one file name: 1 to 64 bytes of [A-Za-z0-9._-], starting with a letter or
// digit, without "..". Serials are case-sensitive (they name directories),
// so unlike distro and version they are not lower-cased.
func CheckSerial(v string) error {
	if v == "" {
		return fmt.Errorf("%w: serial is empty", ErrInvalidSpec)
	}
	if len(v) > MaxNameLen {
		return fmt.Errorf("%w: serial is %d bytes long (at most %d)", ErrInvalidSpec, len(v), MaxNameLen)
	}
	for i := 0; i < len(v); i++ {
		switch c := v[i]; {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case (c == '.' || c == '_' || c == '-') && i > 0:
		default:
			return fmt.Errorf("%w: serial %s: character %s at offset %d is not allowed (use A-Z a-z 0-9, and . _ - after the first)",
				ErrInvalidSpec, strconv.Quote(Printable(v)), strconv.Quote(v[i:i+1]), i)
		}
	}
	if strings.Contains(v, "..") {
		return fmt.Errorf("%w: serial %q contains \"..\"", ErrInvalidSpec, v)
	}
	return nil
}

// CheckName validates a distro or version (see Normalize) and returns it
// lower-cased; field names it in errors.
func CheckName(field, v string) (string, error) {
	if v == "" {
		return "", fmt.Errorf("%w: %s is empty", ErrInvalidSpec, field)
	}
	if len(v) > MaxNameLen {
		return "", fmt.Errorf("%w: %s is %d bytes long (at most %d)", ErrInvalidSpec, field, len(v), MaxNameLen)
	}
	// Check the bytes before lower-casing: strings.ToLower folds some
	// non-ASCII runes into ASCII (the Kelvin sign U+212A becomes "k").
	for i := 0; i < len(v); i++ {
		c := v[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case (c == '.' || c == '_' || c == '-') && i > 0:
		default:
			return "", fmt.Errorf("%w: %s %s: character %s at offset %d is not allowed (use a-z, 0-9, and . _ - after the first)",
				ErrInvalidSpec, field, strconv.Quote(v), strconv.Quote(v[i:i+1]), i)
		}
	}
	v = strings.ToLower(v)
	if strings.Contains(v, "..") {
		return "", fmt.Errorf("%w: %s %q contains \"..\"", ErrInvalidSpec, field, v)
	}
	return v, nil
}

// Printable quotes s when it holds anything but plain characters, and
// truncates it, so hostile input cannot garble a message or a log line.
func Printable(s string) string {
	const limit = 80
	if len(s) > limit {
		s = s[:limit] + "…"
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || r == '"' || r == '\\' || r == ' ' {
			return strconv.Quote(s)
		}
	}
	return s
}
