package resolve_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/resolve"
	"github.com/vmprep/vmprep/pkg/signature"
)

// A per-file checksum (format "single", like Alpine's <image>.sha512) binds
// its one digest to the asset's name, whatever name the line gives.
func TestSingleFileManifest(t *testing.T) {
	t.Parallel()
	m := newMirror(t, testmirror.WithUbuntu())
	disk := []byte("not really a disk, but content with a known digest")
	sum := sha256.Sum256(disk)
	m.Put("single/3.1/x86_64/disk.qcow2", disk)
	m.Put("single/3.1/x86_64/disk.qcow2.sha256", []byte(hex.EncodeToString(sum[:])+"  disk-3.1.0-build7.qcow2\n"))
	catFile := filepath.Join(t.TempDir(), "single.yaml")
	content := `
images:
  - distro: single
    base_url: https://unused.example/
    version_pattern: '[0-9]+\.[0-9]+'
    arches: {amd64: x86_64}
    boot_mode: firmware
    assets:
      - role: disk
        url: single/{version}/{arch}/disk.qcow2
        manifest:
          url: single/{version}/{arch}/disk.qcow2.sha256
          format: single
          signature: none
          note: per-file checksum, unsigned
`
	if err := os.WriteFile(catFile, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	r := newResolver(t, m, []catalog.Option{catalog.WithFile(catFile)})
	res, err := r.Resolve(t.Context(), catalog.ImageSpec{Distro: "single", Version: "3.1", Arch: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := res.Asset(catalog.RoleDisk)
	want := digest.Digest{Algorithm: digest.SHA256, Hex: hex.EncodeToString(sum[:])}
	if a.Name != "disk.qcow2" || a.Digest != want || a.Trust.Signed || a.Trust.Note != "per-file checksum, unsigned" {
		t.Fatalf("asset %+v; want disk.qcow2 %s, unsigned with the note", a, want)
	}
}

// A missing detached signature is refused whenever a key is configured,
// even with allow-unsigned: otherwise whoever can tamper with a manifest
// could also strip its signature and turn "bad signature" into "unsigned".
func TestMissingSignatureRefusedDespiteAllowUnsigned(t *testing.T) {
	t.Parallel()
	m := newMirror(t, testmirror.WithArches(catalog.ArchAMD64))
	mp := m.ManifestPath("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleKernel)
	m.Tamper(mp)
	m.Remove(mp + ".gpg")
	for _, allow := range []bool{false, true} {
		t.Run(fmt.Sprint("allow=", allow), func(t *testing.T) {
			opts := append(m.CatalogOptions(), catalog.WithAllowUnsigned(allow))
			res, err := newResolver(t, m, opts).Resolve(t.Context(), catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: "amd64"})
			var re *resolve.Error
			if !errors.Is(err, signature.ErrNoSignature) || !errors.As(err, &re) || re.Op != resolve.OpSignature || re.Retryable {
				t.Fatalf("Resolve = %+v, %v; want a permanent ErrNoSignature", res, err)
			}
			if re.URL != m.FileURL(mp) || !strings.Contains(err.Error(), "SHA256SUMS.gpg") {
				t.Fatalf("error %q does not name the manifest and its signature", err)
			}
		})
	}
}

// An https server redirecting to plain http must not be followed: for an
// unsigned manifest (Debian) the transport is the only protection.
func TestHTTPSDowngradeRedirectRefused(t *testing.T) {
	t.Parallel()
	m := newMirror(t, testmirror.WithUbuntu(), testmirror.WithDebian("12"), testmirror.WithArches(catalog.ArchAMD64))
	tlsFront := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		http.Redirect(w, req, m.URL+strings.TrimPrefix(req.URL.Path, "/"), http.StatusFound)
	}))
	t.Cleanup(tlsFront.Close)
	cat, err := catalog.New(catalog.WithMirror(tlsFront.URL + "/"))
	if err != nil {
		t.Fatal(err)
	}
	r := resolve.New(cat, resolve.WithHTTPClient(tlsFront.Client()), resolve.WithRetry(2, time.Millisecond))
	// Neither the listing of serials nor, for a pinned serial, the manifest.
	for spec, op := range map[catalog.ImageSpec]resolve.Op{
		{Distro: "debian", Version: "12", Arch: "amd64"}:                                         resolve.OpSerials,
		{Distro: "debian", Version: "12", Arch: "amd64", Serial: testmirror.DefaultDebianSerial}: resolve.OpManifest,
	} {
		res, err := r.Resolve(t.Context(), spec)
		var re *resolve.Error
		if !errors.Is(err, resolve.ErrInsecureRedirect) || !errors.As(err, &re) || re.Op != op || re.Retryable {
			t.Fatalf("Resolve(%v) = %+v, %v; want a permanent ErrInsecureRedirect at %s", spec, res, err, op)
		}
	}
	if got := m.Requests(m.ManifestPath("debian", "12", catalog.ArchAMD64, catalog.RoleDisk)); got != 0 {
		t.Fatalf("the plain-http manifest was requested %d times", got)
	}
	if got := m.Requests(m.VersionDir("debian", "12")); got != 0 {
		t.Fatalf("the plain-http listing was requested %d times", got)
	}
}

// WithTimeout bounds each attempt even when the caller's client has no
// timeout of its own, so a stalled body cannot hang a resolution.
func TestStalledBodyWithoutClientTimeout(t *testing.T) {
	t.Parallel()
	m := newMirror(t, testmirror.WithArches(catalog.ArchAMD64))
	mp := m.ManifestPath("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)
	m.SetFault(mp, testmirror.Fault{Stall: true, After: 16})
	r := newResolver(t, m, m.CatalogOptions(), resolve.WithHTTPClient(&http.Client{}), resolve.WithTimeout(100*time.Millisecond))
	_, err := r.Resolve(t.Context(), catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: "amd64"})
	var re *resolve.Error
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &re) || re.Op != resolve.OpManifest || !re.Retryable {
		t.Fatalf("Resolve = %v; want a retryable deadline error fetching the manifest", err)
	}
	if got := m.Requests(mp); got != 3 {
		t.Errorf("stalled manifest requested %d times, want 3 (every attempt times out)", got)
	}
}

// A name chosen by name_pattern among a manifest's entries becomes the last
// element of the asset URL: entries in other folders (or "..") never
// qualify, even when a loose user pattern matches them.
func TestNamePatternIgnoresEntriesOutsideTheDirectory(t *testing.T) {
	t.Parallel()
	m := newMirror(t, testmirror.WithUbuntu())
	sum := func(s string) string { h := sha256.Sum256([]byte(s)); return hex.EncodeToString(h[:]) }
	m.Put("loose/1/SUMS", []byte(sum("good")+"  disk-1.qcow2\n"+sum("evil")+"  sub/disk-9.qcow2\n"+sum("up")+"  ..\n"))
	catFile := filepath.Join(t.TempDir(), "loose.yaml")
	content := `
images:
  - distro: loose
    base_url: https://unused.example/
    versions: ["1"]
    arches: {amd64: amd64}
    boot_mode: firmware
    assets:
      - role: disk
        url: loose/{version}/{name}
        name_pattern: '.*disk-[0-9]+\.qcow2|\.\.'
        manifest:
          url: loose/{version}/SUMS
          signature: none
`
	if err := os.WriteFile(catFile, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	res, err := newResolver(t, m, []catalog.Option{catalog.WithFile(catFile)}).Resolve(t.Context(), catalog.ImageSpec{Distro: "loose", Version: "1", Arch: "amd64"})
	if err != nil {
		t.Fatal(err)
	}
	a, _ := res.Asset(catalog.RoleDisk)
	if a.Name != "disk-1.qcow2" || a.URL != m.URL+"loose/1/disk-1.qcow2" || a.Digest.Hex != sum("good") {
		t.Fatalf("asset %+v; want disk-1.qcow2 in loose/1/", a)
	}
}
