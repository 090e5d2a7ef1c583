// Package fleet is the model of declared selections: which images which
// hosts must hold, the build each selection currently follows, the state
// each host reports, and the rollout that decides which host moves to a new
// build when. It knows nothing of NATS: internal/fleetkv stores these values
// in a key-value bucket, and the resolver and converter processes act on
// them (internal/pipeline).
package fleet

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path"
	"strings"

	"github.com/vmprep/vmprep/pkg/image"
)

// ErrInvalid marks a selection, file or status that cannot be used.
var ErrInvalid = errors.New("invalid selection")

// DefaultKeep is how many builds older than the current one a host keeps
// per selection when the selection does not say.
const DefaultKeep = 1

// maxGlobLen bounds a host pattern: a host name is at most 64 characters.
const maxGlobLen = 128

// Selection says that the hosts whose --target name matches Hosts must hold
// an image. Without Serial it follows the newest build (the sync records
// which); with Serial it is pinned to that build (a rollback is a pin to an
// older one). MaxParallel, Canary and MaxFailed shape the rollout of a new
// build over the matching hosts.
type Selection struct {
	Distro  string           `json:"distro" yaml:"distro"`
	Version string           `json:"version" yaml:"version"`
	Arch    image.Arch       `json:"arch" yaml:"arch,omitempty"`
	Format  image.DiskFormat `json:"format" yaml:"format,omitempty"`
	// Hosts is a glob (path.Match) over host names; empty means every host.
	Hosts string `json:"hosts" yaml:"hosts,omitempty"`
	// Serial pins the selection to one build; empty follows the newest.
	Serial string `json:"serial,omitempty" yaml:"serial,omitempty"`
	// Keep is how many builds before the current one each host keeps.
	Keep int `json:"keep" yaml:"-"`
	// MaxParallel is how many hosts may move to a new build at once (0: all).
	MaxParallel int `json:"max_parallel,omitempty" yaml:"max_parallel,omitempty"`
	// Canary, if set, is a glob of hosts that take a new build first: the
	// others follow once every canary host holds it.
	Canary string `json:"canary,omitempty" yaml:"canary,omitempty"`
	// MaxFailed pauses a rollout once this many hosts failed to take the
	// new build (0: never pause).
	MaxFailed int `json:"max_failed,omitempty" yaml:"max_failed,omitempty"`
}

// Normalize validates s and spells it canonically: distro and version
// lower-cased, arch parsed (empty: the host's), format qcow2 unless raw,
// hosts "*" when empty, keep DefaultKeep when unset. keepSet says whether
// Keep was given (0 is a valid keep: only the current build).
func (s Selection) Normalize(keepSet bool) (Selection, error) {
	spec, err := image.Spec{Distro: s.Distro, Version: s.Version, Arch: s.Arch, Serial: s.Serial}.Normalize()
	if err != nil {
		return Selection{}, fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	out := s
	out.Distro, out.Version, out.Arch, out.Serial = spec.Distro, spec.Version, spec.Arch, spec.Serial
	switch out.Format {
	case "":
		out.Format = image.FormatQCOW2
	case image.FormatQCOW2, image.FormatRaw:
	default:
		return Selection{}, fmt.Errorf("%w: format %s: want raw or qcow2", ErrInvalid, image.Printable(string(s.Format)))
	}
	if out.Hosts == "" {
		out.Hosts = "*"
	}
	if err := checkGlob("hosts", out.Hosts); err != nil {
		return Selection{}, err
	}
	if out.Canary != "" {
		if err := checkGlob("canary", out.Canary); err != nil {
			return Selection{}, err
		}
	}
	if !keepSet && out.Keep == 0 {
		out.Keep = DefaultKeep
	}
	for _, n := range []struct {
		name string
		v    int
	}{{"keep", out.Keep}, {"max-parallel", out.MaxParallel}, {"max-failed", out.MaxFailed}} {
		if n.v < 0 || n.v > 1000 {
			return Selection{}, fmt.Errorf("%w: %s %d: want 0 to 1000", ErrInvalid, n.name, n.v)
		}
	}
	return out, nil
}

// checkGlob accepts a host pattern path.Match can use.
func checkGlob(field, g string) error {
	if len(g) > maxGlobLen {
		return fmt.Errorf("%w: %s pattern is %d bytes long (at most %d)", ErrInvalid, field, len(g), maxGlobLen)
	}
	if _, err := path.Match(g, ""); err != nil {
		return fmt.Errorf("%w: %s pattern %s: %w", ErrInvalid, field, image.Printable(g), err)
	}
	if strings.ContainsAny(g, "/ \t\n") {
		return fmt.Errorf("%w: %s pattern %s: host names have no slash or space", ErrInvalid, field, image.Printable(g))
	}
	return nil
}

// Matches reports whether host is one of the selection's hosts.
func (s Selection) Matches(host string) bool { return matchGlob(s.Hosts, host) }

// IsCanary reports whether host takes a new build before the others.
func (s Selection) IsCanary(host string) bool { return s.Canary != "" && matchGlob(s.Canary, host) }

func matchGlob(g, host string) bool {
	ok, err := path.Match(g, host)
	return err == nil && ok
}

// Pinned reports whether the selection names one build.
func (s Selection) Pinned() bool { return s.Serial != "" }

// Spec is the image the selection names, without a serial.
func (s Selection) Spec() image.Spec {
	return image.Spec{Distro: s.Distro, Version: s.Version, Arch: s.Arch}
}

// ID names a selection in keys and status: what it selects (image, format,
// hosts), not how it is rolled out, so that changing the serial, keep or
// rollout policy of a selection updates it in place. The readable part is
// followed by a hash of the whole identity, so two selections that differ
// only in characters the key cannot hold still differ.
func (s Selection) ID() string {
	identity := strings.Join([]string{s.Distro, s.Version, string(s.Arch), string(s.Format), s.Hosts}, "\x00")
	sum := sha256.Sum256([]byte(identity))
	readable := keySafe(s.Distro + "-" + s.Version + "-" + string(s.Arch) + "-" + string(s.Format))
	return readable + "-" + hex.EncodeToString(sum[:4])
}

// keySafe keeps A-Z a-z 0-9 - _ and turns anything else into "_": an ID
// is one subject token of a key.
func keySafe(s string) string {
	b := []byte(s)
	for i, c := range b {
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '-', c == '_':
		default:
			b[i] = '_'
		}
	}
	return string(b)
}

// String is how the selection reads in tables and messages.
func (s Selection) String() string {
	out := fmt.Sprintf("%s %s %s %s hosts %s", s.Distro, s.Version, s.Arch, s.Format, s.Hosts)
	if s.Serial != "" {
		out += " serial " + s.Serial
	}
	return out
}
