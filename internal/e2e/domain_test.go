package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/download"
	"github.com/vmprep/vmprep/internal/resolve"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
)

// TestGoCallerWithoutNATS is what a Go program does with the domain packages
// alone: resolve, fetch, verify and store Ubuntu 24.04 for both arches.
func TestGoCallerWithoutNATS(t *testing.T) {
	m := testmirror.New(t)
	cat, err := catalog.New(catalog.WithMirror(m.URL), catalog.WithKeyring(m.Keyring()))
	if err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	res := resolve.New(cat)
	dl := download.New(download.WithBackoff(10*time.Millisecond, 100*time.Millisecond))
	ctx := context.Background()
	for _, arch := range []image.Arch{image.ArchAMD64, image.ArchARM64} {
		r, err := res.Resolve(ctx, image.Spec{Distro: "Ubuntu", Version: "24.04", Arch: arch})
		if err != nil {
			t.Fatalf("resolve %s: %v", arch, err)
		}
		if len(r.Assets) != 3 {
			t.Fatalf("%s: %d assets, want kernel, initramfs, disk", arch, len(r.Assets))
		}
		for _, a := range r.Assets {
			if !a.Trust.Signed || a.Trust.Signer != m.Fingerprint() {
				t.Errorf("%s %s: trust %+v, want signed by %s", arch, a.Role, a.Trust, m.Fingerprint())
			}
			dest := st.IngestPath(a.Digest)
			if _, err := dl.Fetch(ctx, download.Request{URL: a.URL, Dest: dest, ExpectedSize: a.Size, Expected: a.Digest, Name: string(a.Role)}); err != nil {
				t.Fatalf("fetch %s %s: %v", arch, a.Role, err)
			}
			blob, err := st.Commit(ctx, dest, a.Digest, a.Size)
			if err != nil {
				t.Fatalf("commit %s %s: %v", arch, a.Role, err)
			}
			if got, err := st.Lookup(ctx, a.Digest); err != nil || got.Path != blob.Path {
				t.Errorf("lookup %s %s: %+v, %v", arch, a.Role, got, err)
			}
			if a.Role == image.RoleDisk && a.Format != image.FormatQCOW2 {
				t.Errorf("%s disk format %q, want qcow2", arch, a.Format)
			}
		}
	}
}
