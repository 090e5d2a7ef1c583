package e2e

import (
	"path/filepath"
	"testing"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// checkPrepared checks that res is a prepared image whose kernel, initramfs
// and disk hold the mirror's bytes of ubuntu version/arch (a raw disk:
// qemu-img's conversion of the mirror's). local maps a result's path to
// where this test can read that file — the host it is valid on — or fails
// the test when the path is not where it must be.
func checkPrepared(t *testing.T, who string, m *testmirror.Mirror, version string, arch image.Arch, res messages.Result, local func(path string) string) {
	t.Helper()
	if res.Status != messages.ResultPrepared {
		t.Fatalf("%s: status %s: %+v", who, res.Status, res.Failure)
	}
	for _, role := range []image.Role{image.RoleKernel, image.RoleInitramfs, image.RoleDisk} {
		f, ok := res.Files[role]
		if !ok {
			t.Fatalf("%s: no %s in %+v", who, role, res.Files)
		}
		rel := m.Path("ubuntu", version, arch, role)
		want := m.Digest(rel).Hex
		if role == image.RoleDisk && res.DiskFormat == image.FormatRaw {
			want = testutil.QemuRawSHA256(t, filepath.Join(m.Dir, filepath.FromSlash(rel)))
		}
		if got := testutil.FileSHA256(t, local(f.Path)); got != want {
			t.Errorf("%s: %s %s %s: %s holds %s, want %s", who, version, arch, role, f.Path, got, want)
		}
	}
}
