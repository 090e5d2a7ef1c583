//go:build unix

package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
)

// TestHostileSmallFiles plants named pipes and symlinks where the store
// keeps its small metadata files (stamps, aliases, records). Opening a pipe
// for reading blocks until a writer appears, so reading one naively hangs
// the warm path, ls and gc forever; a symlink would make the store read
// outside its root. Every operation must instead return, treat the file as
// unusable and, where the store owns it, replace it.
func TestHostileSmallFiles(t *testing.T) {
	ctx := context.Background()
	data := testutil.Fill("aliased", 3000)
	outside := filepath.Join(t.TempDir(), "outside.json")
	tests := []struct {
		name  string
		plant func(t *testing.T, s *Store, b content.BlobInfo) string // returns the planted path
		check func(s *Store, b content.BlobInfo) error
	}{
		{"stamp is a pipe", func(t *testing.T, s *Store, b content.BlobInfo) string {
			return mkfifo(t, filepath.Join(s.Root(), "stamps", "blobs", b.SHA256.Hex))
		}, func(s *Store, b content.BlobInfo) error {
			_, err := s.Lookup(ctx, b.SHA256)
			return err
		}},
		{"alias is a pipe", func(t *testing.T, s *Store, b content.BlobInfo) string {
			return mkfifo(t, filepath.Join(s.Root(), "index", "sha512", testutil.SHA512Of(data).Hex))
		}, func(s *Store, b content.BlobInfo) error {
			if _, err := s.Lookup(ctx, testutil.SHA512Of(data)); !errors.Is(err, content.ErrNotFound) {
				return fmt.Errorf("Lookup through a pipe alias = %v, want ErrNotFound", err)
			}
			_, err := s.List(ctx)
			return err
		}},
		{"record is a pipe", func(t *testing.T, s *Store, b content.BlobInfo) string {
			p, _ := s.recordPath(noble)
			return mkfifo(t, p)
		}, func(s *Store, b content.BlobInfo) error {
			if _, err := s.LoadResolution(ctx, noble, testRoots); err == nil {
				return errors.New("LoadResolution of a pipe succeeded")
			}
			if _, err := s.GC(ctx, content.GCOptions{}); err != nil {
				return err
			}
			return s.SaveResolution(ctx, catalog.Resolution{Spec: noble, Roots: &testRoots})
		}},
		{"ingest file is a pipe", func(t *testing.T, s *Store, b content.BlobInfo) string {
			return mkfifo(t, s.IngestPath(testutil.SHA256Of([]byte("never written"))))
		}, func(s *Store, b content.BlobInfo) error {
			d := testutil.SHA256Of([]byte("never written"))
			if _, err := s.Commit(ctx, s.IngestPath(d), d, 0); err == nil {
				return errors.New("Commit of a pipe succeeded")
			}
			return nil
		}},
		{"record is a symlink out of the root", func(t *testing.T, s *Store, b content.BlobInfo) string {
			r := catalog.Resolution{Spec: noble, Roots: &testRoots, Assets: []image.Asset{{Role: image.RoleKernel, Digest: b.SHA256}}}
			js, _ := json.Marshal(r)
			if err := os.WriteFile(outside, js, 0o644); err != nil {
				t.Fatal(err)
			}
			p, _ := s.recordPath(noble)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, p); err != nil {
				t.Fatal(err)
			}
			return p
		}, func(s *Store, b content.BlobInfo) error {
			if _, err := s.LoadResolution(ctx, noble, testRoots); err == nil {
				return errors.New("LoadResolution followed a symlink out of the store")
			}
			return nil
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			b := commitAs(t, s, data, testutil.SHA512Of(data))
			p := tc.plant(t, s, b)
			done := make(chan error, 1)
			go func() { done <- tc.check(s, b) }()
			select {
			case err := <-done:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(20 * time.Second):
				// Unblock the stuck reader so the test binary can exit.
				if w, err := os.OpenFile(p, os.O_WRONLY, 0); err == nil {
					w.Close()
				}
				t.Fatalf("hung on %s", p)
			}
		})
	}
}

func mkfifo(t *testing.T, p string) string {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	_ = os.Remove(p)
	if err := syscall.Mkfifo(p, 0o644); err != nil {
		t.Skipf("mkfifo: %v", err)
	}
	return p
}
