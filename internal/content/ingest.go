package content

import (
	"context"
	"fmt"
	"io"
	"os"

	"github.com/vmprep/vmprep/internal/ctxio"
	"github.com/vmprep/vmprep/pkg/digest"
)

// Ingest stores what r yields as the blob for expected: it is written into
// the ingest area, then committed (verified against expected and size, if
// > 0). It is how bytes that arrive from elsewhere — an object store, a
// peer — enter the store; a mismatch is quarantined and reported as for
// Commit. The caller should not hold Lock(expected.String()): Ingest takes
// it, so that one process writes a given ingest file at a time.
func (s *Store) Ingest(ctx context.Context, expected digest.Digest, size int64, r io.Reader) (BlobInfo, error) {
	exp, err := normalize(expected)
	if err != nil {
		return BlobInfo{}, err
	}
	if info, err := s.Lookup(ctx, exp); err == nil {
		return info, nil
	}
	unlock, err := s.Lock(ctx, exp.String())
	if err != nil {
		return BlobInfo{}, err
	}
	defer func() { _ = unlock() }()
	if info, err := s.Lookup(ctx, exp); err == nil {
		return info, nil // another process stored it meanwhile
	}
	if size > 0 {
		if err := s.CheckFree(s.path(dirIngest), size); err != nil {
			return BlobInfo{}, err
		}
	}
	path := s.IngestPath(exp)
	// Not resumable (the source is a stream): start from nothing.
	f, err := os.OpenFile(path, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return BlobInfo{}, fmt.Errorf("store: ingest %s: %w", exp, err)
	}
	n, err := io.Copy(f, ctxio.Reader(ctx, r))
	if err == nil && size > 0 && n != size {
		err = fmt.Errorf("got %d bytes, expected %d: %w", n, size, ErrSizeMismatch)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		s.removeIngest(path)
		return BlobInfo{}, fmt.Errorf("store: ingest %s: %w", exp, err)
	}
	return s.Commit(ctx, path, exp, size)
}

// DiscardIngest removes the partial download for expected and its sidecar
// (say, once its bytes were handed on elsewhere).
func (s *Store) DiscardIngest(expected digest.Digest) {
	if p := s.IngestPath(expected); p != "" {
		s.removeIngest(p)
	}
}
