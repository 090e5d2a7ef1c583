package store

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/testutil"
)

// TestGCDoesNotRaceWithLinkImage runs LinkImage while GC is between its scan
// and its removals, replacing a link GC saw dangling with one to a blob GC
// saw unreferenced. Whatever the interleaving, GC must not leave a link that
// LinkImage reported as made pointing nowhere (or remove the link itself):
// either LinkImage completes before GC's scan, or after GC, failing if its
// target is gone, so that the caller fetches it again.
func TestGCDoesNotRaceWithLinkImage(t *testing.T) {
	s := newStore(t)
	b := commit(t, s, testutil.Fill("old, unreferenced", 5000))
	dir, _ := s.ImageDir(noble)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, LinkKernel)
	if err := os.Symlink("../../../../blobs/sha256/"+testutil.SHA256Of([]byte("gone")).Hex, link); err != nil {
		t.Fatal(err)
	}
	linked := make(chan error, 1)
	s.gcAfterScan = func() {
		go func() {
			_, err := s.LinkImage(t.Context(), noble, LinkKernel, b.Path)
			linked <- err
		}()
		// Give an unsynchronised LinkImage every chance to finish inside
		// GC's window; a correct one waits for GC instead.
		select {
		case err := <-linked:
			linked <- err
		case <-time.After(300 * time.Millisecond):
		}
	}
	if _, err := s.GC(context.Background(), content.GCOptions{MinAge: -1}); err != nil {
		t.Fatal(err)
	}
	if err := <-linked; err == nil {
		fi, serr := os.Stat(link) // follows the link
		if serr != nil || fi.Size() != b.Size {
			t.Fatalf("LinkImage succeeded during GC, then GC broke the link: %v", serr)
		}
	}
}
