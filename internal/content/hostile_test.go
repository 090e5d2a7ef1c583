package content

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestOpenRefusesSymlinkedLayout: a layout directory replaced by a symlink
// out of the root is refused (the root itself may be a symlink).
func TestOpenRefusesSymlinkedLayout(t *testing.T) {
	for _, dir := range []string{"locks", "locks/blob", "stamps/blobs", "quarantine", "index/sha512"} {
		t.Run(dir, func(t *testing.T) {
			root := newStore(t).Root()
			outside := t.TempDir()
			p := filepath.Join(root, dir)
			if err := os.RemoveAll(p); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, p); err != nil {
				t.Fatal(err)
			}
			if _, err := Open(root); !errors.Is(err, ErrInvalidName) || !strings.Contains(err.Error(), p) {
				t.Errorf("Open with %s a symlink = %v, want ErrInvalidName naming it", dir, err)
			}
		})
	}
	// A symlinked root is fine.
	real := newStore(t).Root()
	alias := filepath.Join(t.TempDir(), "alias")
	if err := os.Symlink(real, alias); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(alias); err != nil {
		t.Errorf("Open through a symlinked root: %v", err)
	}
}
