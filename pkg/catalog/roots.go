package catalog

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strings"

	"github.com/vmprep/vmprep/pkg/image"
)

// TrustRoots are what a resolution's trust rests on: the keys allowed to
// sign its manifests, the catalog entry that says where and how to read
// them, and the mirror they were read from. A stored resolution is reused
// only under the same roots: a digest signed by a throwaway test key, or a
// URL of another mirror, must never answer a request configured otherwise.
type TrustRoots struct {
	// Keyring lists the fingerprints (upper-case hex, sorted) of the keys
	// trusted to sign the entry's manifests; empty when none is configured.
	Keyring []string `json:"keyring,omitempty"`
	// AllowUnsigned is set when no key is configured and unsigned
	// resolution was allowed: such a resolution never answers a request
	// that did not allow it.
	AllowUnsigned bool `json:"allow_unsigned,omitempty"`
	// Catalog is the SHA-256 of the catalog entry for the distro (built-in
	// or from a catalog file), before the mirror and keyring options apply.
	Catalog string `json:"catalog"`
	// Mirror is the base URL the entry's paths are read from.
	Mirror string `json:"mirror"`
}

// ID is a short, file-name-safe digest of the roots: equal roots have equal IDs.
func (r TrustRoots) ID() string {
	r.Keyring = slices.Sorted(slices.Values(r.Keyring))
	b, _ := json.Marshal(r) // plain strings and a bool: cannot fail
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// Equal reports whether r and o are the same roots.
func (r TrustRoots) Equal(o TrustRoots) bool { return r.ID() == o.ID() }

// String names the roots for people (keyring, catalog entry, mirror).
func (r TrustRoots) String() string {
	return strings.Join([]string{r.keyringString(), "catalog entry " + shortHash(r.Catalog), "mirror " + r.Mirror}, ", ")
}

func (r TrustRoots) keyringString() string {
	switch {
	case len(r.Keyring) > 0:
		return "keyring " + strings.Join(r.Keyring, " ")
	case r.AllowUnsigned:
		return "no keyring (unsigned allowed)"
	default:
		return "no keyring"
	}
}

func shortHash(h string) string {
	if len(h) > len("sha256:")+12 {
		return h[:len("sha256:")+12] + "…"
	}
	return h
}

// Differences names the parts of r that differ from now, each with what it
// is now ("keyring A (now B), mirror M (now N)"); a nil r is roots recorded
// before resolutions named theirs.
func Differences(r *TrustRoots, now TrustRoots) string {
	if r == nil {
		return "unknown: recorded before vmprep bound cached builds to their keyring, catalog entry and mirror"
	}
	var out []string
	if k, n := r.keyringString(), now.keyringString(); k != n {
		out = append(out, k+" (now "+n+")")
	}
	if r.Catalog != now.Catalog {
		out = append(out, "catalog entry "+shortHash(r.Catalog)+" (now "+shortHash(now.Catalog)+")")
	}
	if r.Mirror != now.Mirror {
		out = append(out, "mirror "+r.Mirror+" (now "+now.Mirror+")")
	}
	if len(out) == 0 {
		return r.String()
	}
	return strings.Join(out, ", ")
}

// entryHash is the SHA-256 of a catalog entry as parsed, so that an edited
// entry (another URL template, manifest, serial pattern or keyring path)
// is another root.
func entryHash(img Image) (string, error) {
	b, err := json.Marshal(img)
	if err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrInvalidCatalog, img.Distro, err)
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:]), nil
}

// Roots returns the trust roots a resolution of spec rests on under this
// catalog (spec's serial is ignored). Its errors are Canonical's.
func (c *Catalog) Roots(spec image.Spec) (TrustRoots, error) {
	spec.Serial = ""
	_, e, err := c.canonical(spec)
	if err != nil {
		return TrustRoots{}, err
	}
	r := TrustRoots{Catalog: e.hash, Mirror: e.BaseURL}
	if r.Mirror != "" && !strings.HasSuffix(r.Mirror, "/") {
		r.Mirror += "/" // --mirror URL and URL/ are one mirror
	}
	if e.keyring != nil {
		r.Keyring = slices.Sorted(slices.Values(e.keyring.Fingerprints()))
	} else {
		// Only where a manifest is signed does allowing unsigned change anything.
		r.AllowUnsigned = c.allowUnsigned && slices.ContainsFunc(e.Assets, func(a AssetTemplate) bool { return a.Manifest.Signature != SignatureNone })
	}
	return r, nil
}
