package content

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmprep/vmprep/internal/atomicfile"
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
		if err := ValidComponent("derived "+p.what, p.v); err != nil {
			return "", fmt.Errorf("store: %w", err)
		}
		if strings.Contains(p.v, "_") {
			return "", fmt.Errorf("store: %w: derived %s %q contains '_'", ErrInvalidName, p.what, p.v)
		}
	}
	name := string(src.Algorithm) + "-" + src.Hex + "_" + k.Converter + "_" + k.Format
	// Leave room for temporary names (".<name>.tmp-<random>") under NAME_MAX (255).
	if len(name) > maxDerivedName {
		return "", fmt.Errorf("store: %w: derived name for %s is %d bytes long (max %d)", ErrInvalidName, k, len(name), maxDerivedName)
	}
	return name, nil
}

const maxDerivedName = 220

// ParseDerivedName inverts fileName.
func ParseDerivedName(name string) (DerivedKey, bool) {
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

// checkDerivedLocked is checkBlobLocked for derived/<name>, against the
// sparse digest recorded by PutDerived; the derived lock must be held. It
// returns the sparse digest (hex) of a good file.
func (s *Store) checkDerivedLocked(ctx context.Context, name string, force bool) (path, sparse, quarantined string, err error) {
	path = s.path(dirDerived, name)
	fi, err := os.Lstat(path)
	if notExist(err) {
		return "", "", "", fmt.Errorf("store: derived %s: %w", name, ErrNotFound)
	}
	if err != nil {
		return "", "", "", fmt.Errorf("store: derived %s: %w", name, err)
	}
	st, stErr := readStamp(s.derivedStampPath(name))
	if stErr == nil && !force && fi.Mode().IsRegular() && st.sameFile(statStamp(fi)) {
		return path, st.SparseSHA256, "", nil
	}
	var actual string
	var size int64
	reason := ""
	switch {
	case !fi.Mode().IsRegular():
		reason = fmt.Sprintf("a %s, not a regular file", fileKind(fi.Mode()))
	case stErr != nil || st.SparseSHA256 == "":
		// A crash between produce and stamp, or a stray file: its content is
		// of unknown provenance. It can be derived again, so don't trust it.
		reason = "no stamp recorded: content unverifiable"
	default:
		actual, size, err = s.sparseHash(ctx, path)
		if err != nil {
			return "", "", "", fmt.Errorf("store: verify derived %s: %w", name, err)
		}
		if actual != st.SparseSHA256 {
			reason = "content no longer matches the digest recorded when it was derived"
		}
	}
	if reason != "" {
		q, qerr := s.quarantine(path, quarantineNote{
			Reason: reason, Expected: sparseString(st.SparseSHA256), Actual: sparseString(actual), ActualSize: size,
		})
		_ = os.Remove(s.derivedStampPath(name))
		if qerr != nil {
			return "", "", "", qerr
		}
		return "", "", q, &QuarantinedError{What: "derived " + name, Reason: reason, To: q}
	}
	if err := s.seal(path, s.derivedStampPath(name), stamp{SparseSHA256: actual, CommittedAt: st.CommittedAt}); err != nil {
		return "", "", "", err
	}
	return path, actual, "", nil
}

func sparseString(hex string) string {
	if hex == "" {
		return ""
	}
	return "sparse-sha256:" + hex
}

// PutDerived returns the derived artifact for k, producing it if absent. Only
// one producer runs per key across goroutines and processes; the others wait
// (respecting ctx) and then reuse its result. produce gets the final path and
// must publish atomically itself (WriteAtomic does: temporary name in the
// same directory, fsync, rename). On a produce error anything at the path is
// removed.
//
// The store then computes the result's sparse digest (see sparseHash: cost in
// proportion to the non-zero data, not the virtual size, and mostly
// page-cache hits right after the producer wrote it) and records it with the
// stamp, so that Verify and a stamp mismatch can tell a damaged artifact
// from a good one.
func (s *Store) PutDerived(ctx context.Context, k DerivedKey, produce func(ctx context.Context, dst string) error) (string, error) {
	return s.PutDerivedSealed(ctx, k, func(ctx context.Context, dst string) (string, error) {
		return "", produce(ctx, dst)
	})
}

// PutDerivedSealed is PutDerived for a producer that computes the sparse
// digest of what it writes as it writes it (see SparseDigest) and returns
// it (hex): the store seals the result with it instead of reading and
// hashing the whole output again. A producer that returns "" is hashed as
// by PutDerived. A wrong digest is found by the next check of the file that
// re-hashes it, which quarantines the file as damaged.
func (s *Store) PutDerivedSealed(ctx context.Context, k DerivedKey, produce func(ctx context.Context, dst string) (sparseSHA256 string, err error)) (string, error) {
	name, err := k.fileName()
	if err != nil {
		return "", err
	}
	if p, err := s.Derived(ctx, k); err == nil {
		return p, nil
	} else if !errors.Is(err, ErrNotFound) {
		return "", err
	}
	unlockGC, err := s.PublishLock(ctx)
	if err != nil {
		return "", fmt.Errorf("store: derive %s: %w", k, err)
	}
	defer unlockGC()
	s.step("derive:locking")
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
	s.removeKilledTemps(name)
	path := s.path(dirDerived, name)
	sum, err := produce(ctx, path)
	if err != nil {
		s.removeAll(path)
		return "", fmt.Errorf("store: derive %s: %w", k, err)
	}
	s.step("derive:produced")
	fi, err := os.Lstat(path)
	if err != nil {
		return "", fmt.Errorf("store: derive %s: producer reported success but %s is missing: %w", k, path, err)
	}
	if !fi.Mode().IsRegular() {
		s.removeAll(path)
		return "", fmt.Errorf("store: derive %s: producer left a %s at %s, want a regular file", k, fileKind(fi.Mode()), path)
	}
	if sum == "" {
		if sum, _, err = s.sparseHash(ctx, path); err != nil {
			s.removeAll(path)
			return "", fmt.Errorf("store: derive %s: hash result: %w", k, err)
		}
	}
	if err := s.seal(path, s.derivedStampPath(name), stamp{SparseSHA256: sum}); err != nil {
		return "", err
	}
	s.log.Debug("store: derived", "key", k.String(), "sparse_sha256", sum, "size", fi.Size())
	return path, nil
}

// removeKilledTemps removes the temporary files of derived/<name> (named
// ".<name>.tmp-*" by WriteAtomic and qcow2.ConvertToRaw) before another
// producer starts: a killed converter's can be many GiB, and waiting for GC
// could leave no room for the new one. The caller holds the key's lock, which
// every producer of the key holds while it writes, so any such file now is a
// dead producer's; other keys' files are never touched.
func (s *Store) removeKilledTemps(name string) {
	dir := s.path(dirDerived)
	ents, err := os.ReadDir(dir)
	if err != nil {
		s.log.Warn("store: cannot list derived files", "dir", dir, "err", err)
		return
	}
	prefix := atomicfile.TempPrefix(name)
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), prefix) {
			s.log.Info("store: removing a killed producer's temporary file", "path", filepath.Join(dir, e.Name()))
			s.removeAll(filepath.Join(dir, e.Name()))
		}
	}
}

func (s *Store) removeAll(path string) {
	if err := os.RemoveAll(path); err != nil {
		s.log.Warn("store: cannot remove", "path", path, "err", err)
	}
}
