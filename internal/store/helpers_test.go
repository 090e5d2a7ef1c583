package store

import (
	"context"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/filelock"
	"github.com/vmprep/vmprep/pkg/digest"
)

// The content store's own tests (internal/content) have twins of these
// helpers; a test package cannot share them across the package line.

func newStore(t *testing.T, opts ...content.Option) *Store {
	t.Helper()
	s, err := Open(filepath.Join(t.TempDir(), "store"), opts...)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func sha256Of(b []byte) digest.Digest {
	h := sha256.Sum256(b)
	return digest.Digest{Algorithm: digest.SHA256, Hex: hex.EncodeToString(h[:])}
}

func sha512Of(b []byte) digest.Digest {
	h := sha512.Sum512(b)
	return digest.Digest{Algorithm: digest.SHA512, Hex: hex.EncodeToString(h[:])}
}

// fill returns n deterministic pseudo-random bytes distinct per seed.
func fill(seed string, n int) []byte {
	out := make([]byte, 0, n+sha256.Size)
	block := sha256.Sum256([]byte(seed))
	for len(out) < n {
		out = append(out, block[:]...)
		block = sha256.Sum256(block[:])
	}
	return out[:n]
}

// ingest writes b as the ingest file for d.
func ingest(t *testing.T, s *Store, d digest.Digest, b []byte) string {
	t.Helper()
	p := s.IngestPath(d)
	if p == "" {
		t.Fatalf("no ingest path for %v", d)
	}
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func commit(t *testing.T, s *Store, b []byte) content.BlobInfo {
	t.Helper()
	d := sha256Of(b)
	info, err := s.Commit(context.Background(), ingest(t, s, d, b), d, int64(len(b)))
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// dirNames lists a directory's entries (nil if it does not exist).
func dirNames(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	return names
}

func exists(p string) bool { _, err := os.Lstat(p); return err == nil }

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
