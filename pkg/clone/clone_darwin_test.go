package clone

import (
	"os"
	"path/filepath"
	"testing"
)

// TestCloneAPFS: on macOS's own volume (APFS; the temporary directory is on
// it) a raw clone is a clonefile, complete, grown, published with the
// asked mode, and writing to it leaves the base alone.
func TestCloneAPFS(t *testing.T) {
	dir := t.TempDir()
	base := filepath.Join(dir, "base.raw")
	makeBase(t, base)
	want := fileDigest(t, base)
	dest := filepath.Join(dir, "vm1.raw")

	res, err := Clone(t.Context(), base, dest, Options{Size: 96 * mib, RequireCOW: true})
	if err != nil {
		t.Fatalf("clone in %s (APFS expected): %v", dir, err)
	}
	if res.Method != MethodClonefile || res.Size != 96*mib {
		t.Fatalf("result %+v, want clonefile of 96 MiB", res)
	}
	if fi, err := os.Stat(dest); err != nil || fi.Size() != 96*mib || fi.Mode().Perm() != 0o644 {
		t.Fatalf("dest: %v, %v", fi, err)
	}
	if !samePrefix(t, base, dest) {
		t.Fatal("the clone's content differs from the base's")
	}
	scribble(t, dest, 1*mib)
	if got := fileDigest(t, base); got != want {
		t.Fatal("writing to the clone changed the base")
	}
	assertNoTemps(t, dir)
}
