package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/vmprep/vmprep/pkg/digest"
)

// DerivedKey names an artifact derived from a blob, such as the raw image
// converted from a qcow2 blob. A new converter version is a new key, so a
// converter fix never serves stale output; the source blob is never modified.
type DerivedKey struct {
	// Source is the digest of the source blob: its SHA-256 (BlobInfo.SHA256).
	Source digest.Digest `json:"source"`
	// Converter is the converter's name and version, e.g. "qcow2raw-1".
	Converter string `json:"converter"`
	// Format is the target format, e.g. "raw".
	Format string `json:"format"`
}

func (k DerivedKey) String() string {
	return fmt.Sprintf("%s→%s(%s)", k.Source, k.Format, k.Converter)
}

// fileName is "<alg>-<hex>_<converter>_<format>"; '_' is refused inside the
// parts so that the name parses back unambiguously.
func (k DerivedKey) fileName() (string, error) {
	src, err := normalize(k.Source)
	if err != nil {
		return "", fmt.Errorf("store: derived key: source: %w", err)
	}
	for _, p := range []struct{ what, v string }{{"converter", k.Converter}, {"format", k.Format}} {
		if err := validComponent("derived "+p.what, p.v); err != nil {
			return "", fmt.Errorf("store: %w", err)
		}
		if strings.Contains(p.v, "_") {
			return "", fmt.Errorf("store: %w: derived %s %q contains '_'", ErrInvalidName, p.what, p.v)
		}
	}
	return string(src.Algorithm) + "-" + src.Hex + "_" + k.Converter + "_" + k.Format, nil
}

// parseDerivedName inverts fileName.
func parseDerivedName(name string) (DerivedKey, bool) {
	parts := strings.Split(name, "_")
	if len(parts) != 3 {
		return DerivedKey{}, false
	}
	alg, hex, ok := strings.Cut(parts[0], "-")
	if !ok {
		return DerivedKey{}, false
	}
	src, err := digest.New(digest.Algorithm(alg), hex)
	if err != nil || src.Hex != hex || string(src.Algorithm) != alg {
		return DerivedKey{}, false
	}
	k := DerivedKey{Source: src, Converter: parts[1], Format: parts[2]}
	if n, err := k.fileName(); err != nil || n != name {
		return DerivedKey{}, false
	}
	return k, true
}

func (s *Store) derivedStampPath(name string) string { return s.path(dirStamps, "derived", name) }

// Derived returns the path of the derived artifact for k, or ErrNotFound.
// Like Lookup it trusts a matching stamp; otherwise it re-hashes against the
// SHA-256 recorded by PutDerived and quarantines a mismatch (ErrNotFound and
// ErrQuarantined), so that the caller derives it again.
func (s *Store) Derived(ctx context.Context, k DerivedKey) (string, error) {
	name, err := k.fileName()
	if err != nil {
		return "", err
	}
	path := s.path(dirDerived, name)
	fi, err := os.Lstat(path)
	if notExist(err) {
		return "", fmt.Errorf("store: derived %s: %w", k, ErrNotFound)
	}
	if err != nil {
		return "", fmt.Errorf("store: derived %s: %w", k, err)
	}
	if fi.Mode().IsRegular() {
		if _, ok := stampMatches(s.derivedStampPath(name), fi); ok {
			return path, nil
		}
	}
	unlock, _, err := s.lock(ctx, lockDerived, name, false)
	if err != nil {
		return "", fmt.Errorf("store: derived %s: %w", k, err)
	}
	defer unlock()
	p, _, _, err := s.checkDerivedLocked(ctx, name, false)
	return p, err
}

// checkDerivedLocked is checkBlobLocked for derived/<name>; the derived lock
// must be held.
func (s *Store) checkDerivedLocked(ctx context.Context, name string, force bool) (path string, sum digest.Digest, quarantined string, err error) {
	path = s.path(dirDerived, name)
	fi, err := os.Lstat(path)
	if notExist(err) {
		return "", digest.Digest{}, "", fmt.Errorf("store: derived %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return "", digest.Digest{}, "", fmt.Errorf("store: derived %s: %w", name, err)
	}
	st, stErr := readStamp(s.derivedStampPath(name))
	if stErr == nil && !force && fi.Mode().IsRegular() && st.sameFile(statStamp(fi)) {
		return path, digest.Digest{Algorithm: digest.SHA256, Hex: st.SHA256}, "", nil
	}
	var actual string
	var size int64
	reason := ""
	switch {
	case !fi.Mode().IsRegular():
		reason = fmt.Sprintf("not a regular file (%s)", fi.Mode().Type())
	case stErr != nil || st.SHA256 == "":
		// A crash between produce and stamp, or a stray file: its content is
		// of unknown provenance. It can be derived again, so don't trust it.
		reason = "no stamp recorded: content unverifiable"
	default:
		actual, _, size, err = s.hashPath(ctx, path, "")
		if err != nil {
			return "", digest.Digest{}, "", fmt.Errorf("store: verify derived %s: %w", name, err)
		}
		if actual != st.SHA256 {
			reason = "content no longer matches the digest recorded when it was derived"
		}
	}
	if reason != "" {
		q, qerr := s.quarantine(path, quarantineNote{
			Reason: reason, Expected: sha256String(st.SHA256), Actual: sha256String(actual), ActualSize: size,
		})
		_ = os.Remove(s.derivedStampPath(name))
		if qerr != nil {
			return "", digest.Digest{}, "", qerr
		}
		return "", digest.Digest{}, q, fmt.Errorf("store: derived %s: %s, moved to %s: %w (%w)", name, reason, q, ErrQuarantined, ErrNotFound)
	}
	if err := s.seal(path, s.derivedStampPath(name), actual, st.CommittedAt); err != nil {
		return "", digest.Digest{}, "", err
	}
	return path, digest.Digest{Algorithm: digest.SHA256, Hex: actual}, "", nil
}

// PutDerived returns the derived artifact for k, producing it if absent. Only
// one producer runs per key across goroutines and processes; the others wait
// (respecting ctx) and then reuse its result. produce gets the final path and
// must publish atomically itself (WriteAtomic does: temporary name in the
// same directory, fsync, rename). On a produce error anything at the path is
// removed.
//
// The store then hashes the result once (SHA-256) and records it with the
// stamp, so that Verify and a stamp mismatch can tell a damaged artifact from
// a good one. That is one sequential read of a file the producer has just
// written (mostly page-cache hits), small beside the conversion itself.
func (s *Store) PutDerived(ctx context.Context, k DerivedKey, produce func(ctx context.Context, dst string) error) (string, error) {
	name, err := k.fileName()
	if err != nil {
		return "", err
	}
	if p, err := s.Derived(ctx, k); err == nil {
		return p, nil
	} else if !errors.Is(err, ErrNotFound) {
		return "", err
	}
	unlockGC, err := s.gcShared(ctx)
	if err != nil {
		return "", fmt.Errorf("store: derive %s: %w", k, err)
	}
	defer unlockGC()
	unlock, _, err := s.lock(ctx, lockDerived, name, false)
	if err != nil {
		return "", fmt.Errorf("store: derive %s: %w", k, err)
	}
	defer unlock()
	if p, _, _, err := s.checkDerivedLocked(ctx, name, false); err == nil {
		return p, nil // another producer finished while we waited
	} else if !errors.Is(err, ErrNotFound) {
		return "", err
	}
	path := s.path(dirDerived, name)
	if err := produce(ctx, path); err != nil {
		s.removeAll(path)
		return "", fmt.Errorf("store: derive %s: %w", k, err)
	}
	fi, err := os.Lstat(path)
	if err != nil {
		return "", fmt.Errorf("store: derive %s: producer reported success but %s is missing: %w", k, path, err)
	}
	if !fi.Mode().IsRegular() {
		s.removeAll(path)
		return "", fmt.Errorf("store: derive %s: producer left a %s at %s, want a regular file", k, fi.Mode().Type(), path)
	}
	sum, _, _, err := s.hashPath(ctx, path, "")
	if err != nil {
		s.removeAll(path)
		return "", fmt.Errorf("store: derive %s: hash result: %w", k, err)
	}
	if err := s.seal(path, s.derivedStampPath(name), sum, time.Time{}); err != nil {
		return "", err
	}
	s.log.Debug("store: derived", "key", k.String(), "sha256", sum, "size", fi.Size())
	return path, nil
}

func (s *Store) removeAll(path string) {
	if err := os.RemoveAll(path); err != nil {
		s.log.Warn("store: cannot remove", "path", path, "err", err)
	}
}
