package store

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/filelock"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/digest"
)

// The helpers that need no Store are in internal/testutil.

func newStore(t *testing.T, opts ...content.Option) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "store"), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// commit stores b as a blob through Ingest (the content store's own tests
// cover the ingest-file path).
func commit(t *testing.T, s *Store, b []byte) content.BlobInfo {
	t.Helper()
	return commitAs(t, s, b, testutil.SHA256Of(b))
}

// commitAs stores b as the blob for d (a SHA-512 too).
func commitAs(t *testing.T, s *Store, b []byte, d digest.Digest) content.BlobInfo {
	t.Helper()
	info, err := s.Ingest(t.Context(), d, int64(len(b)), bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// holdLock takes lock name through a second Store on the same root: its
// flock excludes s's like another process's would (flock locks belong to
// the open file, not the process).
func holdLock(t *testing.T, root, name string) (release func() error) {
	t.Helper()
	other, err := content.Open(root)
	if err != nil {
		t.Fatal(err)
	}
	release, err = other.Lock(t.Context(), name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = release() })
	return release
}

// writeProducer returns a produce func that publishes b with WriteAtomic and
// counts its calls.
func writeProducer(b []byte, calls *atomic.Int64) func(context.Context, string) error {
	return func(ctx context.Context, dst string) error {
		calls.Add(1)
		return content.WriteAtomic(dst, 0o644, func(f *os.File) error {
			_, err := f.Write(b)
			return err
		})
	}
}

// sparseDigest is the sparse digest Verify computes for path, afresh.
func sparseDigest(t *testing.T, s *Store, path string) string {
	t.Helper()
	var got string
	if err := s.Verify(t.Context(), func(r content.VerifyResult) {
		if r.Path == path {
			got = r.SparseSHA256
		}
	}); err != nil {
		t.Fatal(err)
	}
	if got == "" {
		t.Fatalf("Verify did not report %s", path)
	}
	return got
}

// holdGCLock takes the content store's GC lock (locks/gc) exclusively, as a
// running GC holds it.
func holdGCLock(t *testing.T, s *Store) (unlock func() error, err error) {
	t.Helper()
	l, err := filelock.Acquire(t.Context(), filepath.Join(s.Root(), "locks", "gc"))
	if err != nil {
		return nil, err
	}
	return l.Unlock, nil
}
