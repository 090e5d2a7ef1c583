package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
)

var noble = image.Spec{Distro: "Ubuntu", Version: "24.04", Arch: image.ArchAMD64}

// testRoots are the trust roots the tests' records are resolved under;
// otherRoots differ in the keyring and the mirror.
var (
	testRoots  = catalog.TrustRoots{Keyring: []string{"AAAA1111"}, Catalog: "sha256:0123456789abcdef0123", Mirror: "https://mirror-a.invalid/"}
	otherRoots = catalog.TrustRoots{Keyring: []string{"BBBB2222"}, Catalog: "sha256:0123456789abcdef0123", Mirror: "https://mirror-b.invalid/"}
)

func TestLinkImage(t *testing.T) {
	s := newStore(t)
	a := commit(t, s, testutil.Fill("A", 100))
	link, err := s.LinkImage(t.Context(), noble, LinkDisk, a.Path)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(s.Root(), "images", "ubuntu", "24.04", "amd64", "disk.img"); link != want {
		t.Errorf("link %s, want %s", link, want)
	}
	target, err := os.Readlink(link)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.IsAbs(target) {
		t.Errorf("link target %q is absolute, want relative (the store may move)", target)
	}
	if got, _ := filepath.EvalSymlinks(link); got != a.Path {
		t.Errorf("link resolves to %s, want %s", got, a.Path)
	}
}

// TestLinkImageHonoursContext: LinkImage waits while GC runs, but no longer
// than its context allows, and does nothing once the context has ended.
func TestLinkImageHonoursContext(t *testing.T) {
	s := newStore(t)
	a := commit(t, s, testutil.Fill("A", 100))
	cancelled, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := s.LinkImage(cancelled, noble, LinkDisk, a.Path); !errors.Is(err, context.Canceled) {
		t.Fatalf("LinkImage with a cancelled context = %v, want context.Canceled", err)
	}
	unlockGC, err := holdGCLock(t, s)
	if err != nil {
		t.Fatal(err)
	}
	defer unlockGC()
	ctx, cancel2 := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel2()
	if _, err := s.LinkImage(ctx, noble, LinkDisk, a.Path); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("LinkImage while GC runs = %v, want context.DeadlineExceeded", err)
	}
	dir, _ := s.ImageDir(noble)
	if _, err := os.Lstat(filepath.Join(dir, LinkDisk)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("link made although LinkImage failed: %v", err)
	}
}

// TestLinkImageReplaceIsAtomic relinks between two blobs while readers keep
// opening the link: no reader may ever find it missing.
func TestLinkImageReplaceIsAtomic(t *testing.T) {
	s := newStore(t)
	blobs := []content.BlobInfo{commit(t, s, testutil.Fill("A", 100)), commit(t, s, testutil.Fill("B", 200))}
	link, err := s.LinkImage(t.Context(), noble, LinkKernel, blobs[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	var stop atomic.Bool
	var wg sync.WaitGroup
	var reads, failures atomic.Int64
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for !stop.Load() {
				fi, err := os.Stat(link)
				reads.Add(1)
				if err != nil || (fi.Size() != 100 && fi.Size() != 200) {
					failures.Add(1)
				}
			}
		}()
	}
	for i := range 300 {
		if _, err := s.LinkImage(t.Context(), noble, LinkKernel, blobs[i%2].Path); err != nil {
			t.Fatal(err)
		}
	}
	stop.Store(true)
	wg.Wait()
	if failures.Load() != 0 {
		t.Errorf("%d of %d reads saw no valid link", failures.Load(), reads.Load())
	}
	for _, n := range testutil.DirNames(t, filepath.Dir(link)) {
		if atomicfile.IsTemp(n) {
			t.Errorf("temporary left: %s", n)
		}
	}
}

func TestLinkImageRefuses(t *testing.T) {
	s := newStore(t)
	a := commit(t, s, testutil.Fill("A", 100))
	outside := filepath.Join(t.TempDir(), "evil")
	if err := os.WriteFile(outside, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		spec   image.Spec
		link   string
		target string
	}{
		{"distro dotdot", image.Spec{Distro: "..", Version: "1", Arch: "amd64"}, LinkDisk, a.Path},
		{"version with slash", image.Spec{Distro: "debian", Version: "../../../etc", Arch: "amd64"}, LinkDisk, a.Path},
		{"arch with NUL", image.Spec{Distro: "debian", Version: "13", Arch: "amd\x0064"}, LinkDisk, a.Path},
		{"empty arch", image.Spec{Distro: "debian", Version: "13"}, LinkDisk, a.Path},
		{"backslash", image.Spec{Distro: `a\b`, Version: "13", Arch: "amd64"}, LinkDisk, a.Path},
		{"link name with slash", noble, "../disk.img", a.Path},
		{"hidden link name", noble, ".disk", a.Path},
		{"target outside store", noble, LinkDisk, outside},
		{"target is a store directory", noble, LinkDisk, filepath.Join(s.Root(), content.DirBlobs, "sha256")},
		{"target is a record", noble, LinkDisk, filepath.Join(s.Root(), dirRecords, "x.json")},
		{"target via dotdot", noble, LinkDisk, filepath.Join(s.Root(), content.DirBlobs, "sha256", "..", "..", "..", "evil")},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := s.LinkImage(t.Context(), tc.spec, tc.link, tc.target); !errors.Is(err, content.ErrInvalidName) {
				t.Errorf("LinkImage = %v, want ErrInvalidName", err)
			}
		})
	}
	// Nothing was created outside images/ (or inside it).
	if n := testutil.DirNames(t, filepath.Join(s.Root(), dirImages)); len(n) != 0 {
		t.Errorf("images/ has %v", n)
	}
}

func TestResolutionRoundTrip(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	data := testutil.Fill("disk", 10)
	r := catalog.Resolution{
		Spec:     noble,
		BootMode: catalog.BootKernel,
		Assets: []image.Asset{{
			Role: image.RoleDisk, Name: "noble.img", URL: "https://example.invalid/noble.img",
			Digest: testutil.SHA256Of(data), Size: 10, Format: image.FormatQCOW2,
			Trust: image.Trust{Signed: true, Signer: "D2EB44626FDDC30B513D5BB71A5D6C4C7DB87C81", ManifestURL: "https://example.invalid/SHA256SUMS"},
		}, {
			Role: image.RoleKernel, Name: "vmlinuz", Digest: testutil.SHA512Of(data),
		}},
		ResolvedAt: time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC),
		Roots:      &testRoots,
	}
	if _, err := s.LoadResolution(ctx, noble, testRoots); !errors.Is(err, content.ErrNotFound) {
		t.Fatalf("LoadResolution before save = %v, want ErrNotFound", err)
	}
	if err := s.SaveResolution(ctx, r); err != nil {
		t.Fatal(err)
	}
	for _, spec := range []image.Spec{noble, {Distro: "ubuntu", Version: "24.04", Arch: "amd64"}} {
		got, err := s.LoadResolution(ctx, spec, testRoots)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Errorf("round trip:\n got %+v\nwant %+v", got, r)
		}
	}
	// Overwrite replaces.
	r2 := r
	r2.Assets = r.Assets[:1]
	if err := s.SaveResolution(ctx, r2); err != nil {
		t.Fatal(err)
	}
	if got, _ := s.LoadResolution(ctx, noble, testRoots); len(got.Assets) != 1 {
		t.Errorf("overwrite: %d assets", len(got.Assets))
	}
	if _, err := s.LoadResolution(ctx, image.Spec{Distro: "ubuntu", Version: "22.04", Arch: "amd64"}, testRoots); !errors.Is(err, content.ErrNotFound) {
		t.Errorf("other version: %v", err)
	}
	bad := r
	bad.Spec.Version = "../x"
	if err := s.SaveResolution(ctx, bad); !errors.Is(err, content.ErrInvalidName) {
		t.Errorf("SaveResolution(hostile) = %v", err)
	}
	// A record holding another image's data (copied by hand) is refused.
	p, _ := s.recordPath(image.Spec{Distro: "ubuntu", Version: "25.04", Arch: "amd64"})
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(mustRecordPath(t, s, noble))
	if err := os.WriteFile(p, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoadResolution(ctx, image.Spec{Distro: "ubuntu", Version: "25.04", Arch: "amd64"}, testRoots); err == nil || !strings.Contains(err.Error(), "not the requested image") {
		t.Errorf("mismatched record: %v", err)
	}
	// A garbage record is an error naming the file, not a panic.
	if err := os.WriteFile(p, []byte("{\"assets\": [{\"digest\": \"md5:00\"}]}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoadResolution(ctx, image.Spec{Distro: "ubuntu", Version: "25.04", Arch: "amd64"}, testRoots); err == nil || !strings.Contains(err.Error(), p) {
		t.Errorf("garbage record: %v", err)
	}
}

func mustRecordPath(t *testing.T, s *Store, spec image.Spec) string {
	t.Helper()
	p, err := s.recordPath(spec)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestDefaultRoot(t *testing.T) {
	dir := t.TempDir()
	t.Setenv(content.EnvCacheDir, dir)
	if got, err := content.DefaultRoot(); err != nil || got != dir {
		t.Errorf("DefaultRoot with %s set = %q, %v", content.EnvCacheDir, got, err)
	}
	if runtime.GOOS != "linux" {
		return // os.UserCacheDir reads XDG_CACHE_HOME on Linux only
	}
	t.Setenv(content.EnvCacheDir, "")
	t.Setenv("XDG_CACHE_HOME", dir)
	if got, err := content.DefaultRoot(); err != nil || got != filepath.Join(dir, "vmprep") {
		t.Errorf("DefaultRoot = %q, %v; want under XDG_CACHE_HOME", got, err)
	}
}

// TestPublishRefusesSymlinkedDirs plants a directory symlink inside images/
// or records/ that leads out of the root: LinkImage and SaveResolution must
// refuse to write through it (the spec strings themselves are valid).
func TestPublishRefusesSymlinkedDirs(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		planted string // relative to the root; made a symlink to a directory outside
		publish func(s *Store, b content.BlobInfo) error
	}{
		{"images distro", "images/ubuntu", func(s *Store, b content.BlobInfo) error {
			_, err := s.LinkImage(t.Context(), noble, LinkKernel, b.Path)
			return err
		}},
		{"images version", "images/ubuntu/24.04", func(s *Store, b content.BlobInfo) error {
			_, err := s.LinkImage(t.Context(), noble, LinkKernel, b.Path)
			return err
		}},
		{"images arch", "images/ubuntu/24.04/amd64", func(s *Store, b content.BlobInfo) error {
			_, err := s.LinkImage(t.Context(), noble, LinkKernel, b.Path)
			return err
		}},
		{"records distro", "records/ubuntu", func(s *Store, b content.BlobInfo) error {
			return s.SaveResolution(ctx, catalog.Resolution{Spec: noble, Roots: &testRoots})
		}},
		{"records version", "records/ubuntu/24.04", func(s *Store, b content.BlobInfo) error {
			return s.SaveResolution(ctx, catalog.Resolution{Spec: noble, Roots: &testRoots})
		}},
		{"images itself", "images", func(s *Store, b content.BlobInfo) error {
			_, err := s.LinkImage(t.Context(), noble, LinkKernel, b.Path)
			return err
		}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := newStore(t)
			b := commit(t, s, testutil.Fill("A", 100))
			outside := t.TempDir()
			p := filepath.Join(s.Root(), tc.planted)
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.RemoveAll(p); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, p); err != nil {
				t.Fatal(err)
			}
			err := tc.publish(s, b)
			if !errors.Is(err, content.ErrInvalidName) {
				t.Errorf("publish through %s = %v, want ErrInvalidName", tc.planted, err)
			}
			// Said in words: a file mode string ("L---------") is unreadable.
			if err != nil && !strings.Contains(err.Error(), p+" is a symbolic link, not a directory") {
				t.Errorf("error %q does not say that %s is a symbolic link", err, p)
			}
			if n := testutil.DirNames(t, outside); len(n) != 0 {
				t.Errorf("wrote outside the store: %v", n)
			}
		})
	}
}
