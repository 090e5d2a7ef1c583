package content

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/vmprep/vmprep/pkg/digest"
)

// ErrVerifyFailed is returned by Verify when at least one file failed.
var ErrVerifyFailed = errors.New("verification failed")

// VerifyResult is the outcome for one file.
type VerifyResult struct {
	Kind EntryKind `json:"kind"`
	Path string    `json:"path"`
	// Digest is a blob's SHA-256.
	Digest digest.Digest `json:"digest,omitzero"`
	// SparseSHA256 is a derived file's sparse digest (hex; see PutDerived).
	SparseSHA256 string `json:"sparse_sha256,omitempty"`
	Size         int64  `json:"size"`
	OK           bool   `json:"ok"`
	// Err says why it failed (nil when OK).
	Err error `json:"-"`
	// QuarantinePath is where a bad file was moved.
	QuarantinePath string `json:"quarantine_path,omitempty"`
}

// Verify re-hashes every blob and derived file, ignoring stamps. Bad files
// are quarantined (a later Lookup/Derived reports ErrNotFound, so they are
// fetched or derived again) and good ones get a fresh stamp. report, if not
// nil, is called once per file. The error wraps ErrVerifyFailed if any file
// failed, or is the context's error.
func (s *Store) Verify(ctx context.Context, report func(VerifyResult)) error {
	inv, err := s.scan(ctx)
	if err != nil {
		return fmt.Errorf("store: verify: %w", err)
	}
	if report == nil {
		report = func(VerifyResult) {}
	}
	var bad, total int
	var firstErr error
	note := func(r VerifyResult, err error) {
		total++
		if err != nil {
			bad++
			r.Err = err
			if firstErr == nil {
				firstErr = err
			}
		} else {
			r.OK = true
		}
		report(r)
	}
	for _, hex := range sortedKeys(inv.Blobs) {
		e := inv.Blobs[hex]
		unlock, _, err := s.lock(ctx, lockBlob, hex, false)
		if err != nil {
			return fmt.Errorf("store: verify: %w", err)
		}
		info, q, err := s.checkBlobLocked(ctx, hex, true)
		unlock()
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("store: verify: %w", ctxErr)
		}
		if errors.Is(err, ErrNotFound) && q == "" {
			continue // removed meanwhile (GC)
		}
		note(VerifyResult{Kind: KindBlob, Path: e.Path, Digest: e.Digest, Size: max(info.Size, e.Size), QuarantinePath: q}, err)
	}
	for _, name := range sortedKeys(inv.Derived) {
		e := inv.Derived[name]
		unlock, _, err := s.lock(ctx, lockDerived, name, false)
		if err != nil {
			return fmt.Errorf("store: verify: %w", err)
		}
		_, sparse, q, err := s.checkDerivedLocked(ctx, name, true)
		unlock()
		if ctxErr := ctx.Err(); ctxErr != nil {
			return fmt.Errorf("store: verify: %w", ctxErr)
		}
		if errors.Is(err, ErrNotFound) && q == "" {
			continue
		}
		if sparse == "" {
			sparse = e.SparseSHA256
		}
		note(VerifyResult{Kind: KindDerived, Path: e.Path, SparseSHA256: sparse, Size: e.Size, QuarantinePath: q}, err)
	}
	if bad > 0 {
		return fmt.Errorf("store: verify: %d of %d files failed (first: %v): %w", bad, total, firstErr, ErrVerifyFailed)
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
