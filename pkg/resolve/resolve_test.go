package resolve_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/signtest"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/manifest"
	"github.com/vmprep/vmprep/pkg/resolve"
	"github.com/vmprep/vmprep/pkg/signature"
)

// syncBuffer collects log output from concurrent writers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// newMirror makes a mirror with small files: resolution reads manifests only.
func newMirror(t *testing.T, opts ...testmirror.Option) *testmirror.Mirror {
	t.Helper()
	small := []testmirror.Option{testmirror.WithDiskSize(4<<20, 256<<10), testmirror.WithKernelSize(4<<10, 4<<10)}
	return testmirror.New(t, append(small, opts...)...)
}

func newResolver(t *testing.T, m *testmirror.Mirror, catOpts []catalog.Option, opts ...resolve.Option) *resolve.Resolver {
	t.Helper()
	cat, err := catalog.New(append([]catalog.Option{catalog.WithMirror(m.URL)}, catOpts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return resolve.New(cat, append([]resolve.Option{resolve.WithRetry(3, time.Millisecond)}, opts...)...)
}

func TestResolveUbuntu(t *testing.T) {
	t.Parallel()
	m := newMirror(t)
	var logs syncBuffer
	r := newResolver(t, m, []catalog.Option{catalog.WithKeyring(m.Keyring())},
		resolve.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))), resolve.WithUserAgent("vmprep-test/1"))
	for _, arch := range []catalog.Arch{catalog.ArchAMD64, catalog.ArchARM64} {
		t.Run(string(arch), func(t *testing.T) {
			res, err := r.Resolve(t.Context(), catalog.ImageSpec{Distro: "Ubuntu", Version: "noble", Arch: arch})
			if err != nil {
				t.Fatal(err)
			}
			if want := (catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: arch, Serial: testmirror.DefaultUbuntuSerial}); res.Spec != want || res.BootMode != catalog.BootKernel {
				t.Fatalf("spec %v boot %s", res.Spec, res.BootMode)
			}
			if res.ResolvedAt.IsZero() || len(res.Assets) != 3 {
				t.Fatalf("resolution %+v", res)
			}
			for _, role := range []catalog.Role{catalog.RoleDisk, catalog.RoleKernel, catalog.RoleInitramfs} {
				a, ok := res.Asset(role)
				if !ok {
					t.Fatalf("no %s", role)
				}
				p := m.Path("ubuntu", "24.04", arch, role)
				mp := m.ManifestPath("ubuntu", "24.04", arch, role)
				if a.Name != path.Base(p) || a.URL != m.FileURL(p) || a.Digest != m.Digest(p) {
					t.Errorf("%s = %+v; want %s %s %s", role, a, path.Base(p), m.FileURL(p), m.Digest(p))
				}
				want := catalog.Trust{Signed: true, Signer: m.Fingerprint(), ManifestURL: m.FileURL(mp), SignatureURL: m.FileURL(mp + ".gpg")}
				if a.Trust != want {
					t.Errorf("%s trust %+v, want %+v", role, a.Trust, want)
				}
				if (role == catalog.RoleDisk) != (a.Format == catalog.FormatQCOW2) {
					t.Errorf("%s format %q", role, a.Format)
				}
			}
		})
	}
	// Each manifest and signature is fetched once per resolution, and no content at all.
	for _, p := range []string{m.ManifestPath("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk), m.ManifestPath("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleKernel) + ".gpg"} {
		if got := m.Requests(p); got != 2 {
			t.Errorf("%s requested %d times for 2 resolutions", p, got)
		}
	}
	// One resolver serves concurrent callers.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Go(func() {
			res, err := r.Resolve(t.Context(), catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: "arm64"})
			if err == nil && len(res.Assets) != 3 {
				err = fmt.Errorf("%d assets", len(res.Assets))
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("concurrent Resolve: %v", err)
		}
	}
	if n := m.TotalContentRequests(); n != 0 {
		t.Errorf("resolution fetched %d content files", n)
	}
	if strings.Contains(logs.String(), "WARN") {
		t.Errorf("signed resolution logged a warning: %s", logs.String())
	}
}

func TestResolveDebianUnsigned(t *testing.T) {
	t.Parallel()
	m := newMirror(t, testmirror.WithUbuntu(), testmirror.WithDebian("12"), testmirror.WithArches(catalog.ArchARM64))
	var logs syncBuffer
	r := newResolver(t, m, nil, resolve.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	res, err := r.Resolve(t.Context(), catalog.ImageSpec{Distro: "debian", Version: "bookworm", Arch: "aarch64"})
	if err != nil {
		t.Fatal(err)
	}
	p := m.Path("debian", "12", catalog.ArchARM64, catalog.RoleDisk)
	a, ok := res.Asset(catalog.RoleDisk)
	if !ok || len(res.Assets) != 1 || res.BootMode != catalog.BootFirmware {
		t.Fatalf("%+v", res)
	}
	if a.Digest != m.Digest(p) || a.URL != m.FileURL(p) {
		t.Fatalf("asset %+v, want %s %s", a, m.Digest(p), m.FileURL(p))
	}
	if a.Trust.Signed || a.Trust.Signer != "" || a.Trust.Note == "" || a.Trust.SignatureURL != "" {
		t.Fatalf("unsigned Debian trust = %+v", a.Trust)
	}
	if !strings.Contains(logs.String(), "level=WARN") || !strings.Contains(logs.String(), "SHA512SUMS") {
		t.Fatalf("no warning logged for an unsigned manifest: %q", logs.String())
	}
}

func TestResolveFedora(t *testing.T) {
	t.Parallel()
	m := newMirror(t, testmirror.WithUbuntu(), testmirror.WithFedora("41"))
	other := signtest.NewKey(t, "not fedora")
	spec := catalog.ImageSpec{Distro: "fedora", Version: "41", Arch: "x86_64"}
	disk := m.Path("fedora", "41", catalog.ArchAMD64, catalog.RoleDisk)
	checksum := m.ManifestPath("fedora", "41", catalog.ArchAMD64, catalog.RoleDisk)

	// The user passes Fedora's key as a file (--keyring).
	kr, err := signature.LoadKeyringFile(m.KeyringFile())
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name       string
		opts       []catalog.Option
		wantErr    error
		wantOp     resolve.Op
		wantSigned bool
	}{
		{"user keyring", []catalog.Option{catalog.WithKeyring(kr)}, nil, "", true},
		{"no keyring", nil, catalog.ErrNoTrustedKey, resolve.OpPlan, false},
		{"allow unsigned", []catalog.Option{catalog.WithAllowUnsigned(true)}, nil, "", false},
		{"wrong key", []catalog.Option{catalog.WithKeyring(other.Keyring())}, signature.ErrUnknownSigner, resolve.OpVerify, false},
		{"wrong key despite allow unsigned", []catalog.Option{catalog.WithKeyring(other.Keyring()), catalog.WithAllowUnsigned(true)}, signature.ErrUnknownSigner, resolve.OpVerify, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, err := newResolver(t, m, tt.opts).Resolve(t.Context(), spec)
			if tt.wantErr != nil {
				var re *resolve.Error
				if !errors.Is(err, tt.wantErr) || !errors.As(err, &re) || re.Op != tt.wantOp || re.Retryable {
					t.Fatalf("Resolve = %v; want %v in op %q, permanent", err, tt.wantErr, tt.wantOp)
				}
				if tt.wantOp == resolve.OpVerify && re.URL != m.FileURL(checksum) {
					t.Fatalf("error URL %q, want the manifest %s", re.URL, m.FileURL(checksum))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			a, _ := res.Asset(catalog.RoleDisk)
			if a.Name != path.Base(disk) || a.URL != m.FileURL(disk) || a.Digest != m.Digest(disk) {
				t.Fatalf("asset %+v; want %s", a, disk)
			}
			if a.Size != int64(len(m.Content(disk))) {
				t.Fatalf("size %d, want %d from the CHECKSUM comment", a.Size, len(m.Content(disk)))
			}
			if a.Trust.Signed != tt.wantSigned || a.Trust.ManifestURL != m.FileURL(checksum) || (a.Trust.Note == "") == !tt.wantSigned {
				t.Fatalf("trust %+v", a.Trust)
			}
		})
	}
}

func TestResolveFailures(t *testing.T) {
	t.Parallel()
	const version = "24.04"
	arch := catalog.ArchAMD64
	spec := catalog.ImageSpec{Distro: "ubuntu", Version: version, Arch: arch}
	tests := []struct {
		name      string
		setup     func(m *testmirror.Mirror) (wantURL string)
		catOpts   []catalog.Option
		opts      []resolve.Option
		wantErr   error
		wantOp    resolve.Op
		retryable bool
		mention   []string // substrings the message must carry
	}{
		{
			name: "tampered manifest",
			setup: func(m *testmirror.Mirror) string {
				mp := m.ManifestPath("ubuntu", version, arch, catalog.RoleDisk)
				m.Tamper(mp)
				return m.FileURL(mp)
			},
			wantErr: signature.ErrBadSignature, wantOp: resolve.OpVerify,
		},
		{
			name: "missing signature",
			setup: func(m *testmirror.Mirror) string {
				mp := m.ManifestPath("ubuntu", version, arch, catalog.RoleKernel)
				m.Remove(mp + ".gpg")
				return m.FileURL(mp)
			},
			wantErr: signature.ErrNoSignature, wantOp: resolve.OpSignature, mention: []string{"SHA256SUMS.gpg"},
		},
		{
			name: "missing entry",
			setup: func(m *testmirror.Mirror) string {
				mp := m.ManifestPath("ubuntu", version, arch, catalog.RoleInitramfs)
				name := path.Base(m.Path("ubuntu", version, arch, catalog.RoleInitramfs))
				m.EditManifest(mp, func(text []byte) []byte {
					var keep []string
					for _, l := range strings.SplitAfter(string(text), "\n") {
						if !strings.HasSuffix(strings.TrimSpace(l), name) {
							keep = append(keep, l)
						}
					}
					return []byte(strings.Join(keep, ""))
				})
				return m.FileURL(mp)
			},
			wantErr: manifest.ErrEntryNotFound, wantOp: resolve.OpLookup, mention: []string{"initrd-generic"},
		},
		{
			name: "manifest not found",
			setup: func(m *testmirror.Mirror) string {
				mp := m.ManifestPath("ubuntu", version, arch, catalog.RoleDisk)
				m.SetFault(mp, testmirror.Fault{Status: http.StatusNotFound})
				return m.FileURL(mp)
			},
			wantErr: resolve.ErrNotFound, wantOp: resolve.OpManifest,
		},
		{
			name: "server keeps failing",
			setup: func(m *testmirror.Mirror) string {
				mp := m.ManifestPath("ubuntu", version, arch, catalog.RoleDisk)
				m.SetFault(mp, testmirror.Fault{Status: http.StatusServiceUnavailable})
				return m.FileURL(mp)
			},
			wantErr: &resolve.StatusError{}, wantOp: resolve.OpManifest, retryable: true,
		},
		{
			name: "connection reset on signature",
			setup: func(m *testmirror.Mirror) string {
				mp := m.ManifestPath("ubuntu", version, arch, catalog.RoleDisk)
				m.SetFault(mp+".gpg", testmirror.Fault{Reset: true, After: 10})
				return m.FileURL(mp)
			},
			wantOp: resolve.OpSignature, retryable: true,
		},
		{
			name: "stalled manifest times out",
			setup: func(m *testmirror.Mirror) string {
				mp := m.ManifestPath("ubuntu", version, arch, catalog.RoleDisk)
				m.SetFault(mp, testmirror.Fault{Stall: true, After: 16})
				return m.FileURL(mp)
			},
			opts:   []resolve.Option{resolve.WithHTTPClient(&http.Client{Timeout: 100 * time.Millisecond})},
			wantOp: resolve.OpManifest, retryable: true,
		},
		{
			name: "manifest too large",
			setup: func(m *testmirror.Mirror) string {
				return m.FileURL(m.ManifestPath("ubuntu", version, arch, catalog.RoleDisk))
			},
			opts:    []resolve.Option{resolve.WithMaxManifestSize(64)},
			wantErr: resolve.ErrTooLarge, wantOp: resolve.OpManifest,
		},
		{
			name: "wrong signing key",
			setup: func(m *testmirror.Mirror) string {
				return m.FileURL(m.ManifestPath("ubuntu", version, arch, catalog.RoleDisk))
			},
			catOpts: []catalog.Option{catalog.WithKeyring(nil)}, // keep the built-in Ubuntu key
			wantErr: signature.ErrUnknownSigner, wantOp: resolve.OpVerify,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := newMirror(t, testmirror.WithArches(arch))
			wantURL := tt.setup(m)
			catOpts := tt.catOpts
			if catOpts == nil {
				catOpts = []catalog.Option{catalog.WithKeyring(m.Keyring())}
			}
			_, err := newResolver(t, m, catOpts, tt.opts...).Resolve(t.Context(), spec)
			var re *resolve.Error
			if !errors.As(err, &re) {
				t.Fatalf("Resolve = %v; want *resolve.Error", err)
			}
			if tt.wantErr != nil {
				if se, ok := tt.wantErr.(*resolve.StatusError); ok {
					if !errors.As(err, &se) || se.Code != http.StatusServiceUnavailable {
						t.Fatalf("Resolve = %v; want HTTP 503", err)
					}
				} else if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Resolve = %v; want %v", err, tt.wantErr)
				}
			}
			if re.Op != tt.wantOp || re.URL != wantURL || re.Retryable != tt.retryable || resolve.IsRetryable(err) != tt.retryable {
				t.Fatalf("error %+v; want op %q url %s retryable %v", re, tt.wantOp, wantURL, tt.retryable)
			}
			for _, s := range append(tt.mention, wantURL) {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("message %q lacks %q", err, s)
				}
			}
			if n := m.TotalContentRequests(); n != 0 {
				t.Errorf("%d content requests during a failed resolution", n)
			}
		})
	}
}

func TestTransientFailuresAreRetried(t *testing.T) {
	t.Parallel()
	m := newMirror(t, testmirror.WithArches(catalog.ArchARM64))
	mp := m.ManifestPath("ubuntu", "24.04", catalog.ArchARM64, catalog.RoleKernel)
	m.SetFault(mp, testmirror.Fault{Status: http.StatusBadGateway, Times: 2})
	m.SetFault(mp+".gpg", testmirror.Fault{Reset: true, After: 5, Times: 1})
	r := newResolver(t, m, []catalog.Option{catalog.WithKeyring(m.Keyring())}, resolve.WithRetry(3, time.Millisecond))
	if _, err := r.Resolve(t.Context(), catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: "arm64"}); err != nil {
		t.Fatal(err)
	}
	if got := m.Requests(mp); got != 3 {
		t.Errorf("manifest requested %d times, want 3 (two 502s, then success)", got)
	}
	if got := m.Requests(mp + ".gpg"); got != 2 {
		t.Errorf("signature requested %d times, want 2 (one reset, then success)", got)
	}
}

func TestCancelledContext(t *testing.T) {
	t.Parallel()
	m := newMirror(t, testmirror.WithArches(catalog.ArchAMD64))
	mp := m.ManifestPath("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)
	m.SetFault(mp, testmirror.Fault{Stall: true})
	ctx, cancel := context.WithCancel(t.Context())
	r := newResolver(t, m, []catalog.Option{catalog.WithKeyring(m.Keyring())})
	done := make(chan error, 1)
	go func() {
		_, err := r.Resolve(ctx, catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: "amd64"})
		done <- err
	}()
	deadline := time.Now().Add(time.Minute)
	for m.Requests(mp) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the manifest was never requested")
		}
		time.Sleep(time.Millisecond)
	}
	cancel()
	err := <-done
	if !errors.Is(err, context.Canceled) || resolve.IsRetryable(err) {
		t.Fatalf("Resolve after cancel = %v; want context.Canceled, not retryable", err)
	}
	if got := m.Requests(mp); got != 1 {
		t.Errorf("cancelled fetch was retried: %d requests", got)
	}
}

func TestHostileSpecs(t *testing.T) {
	t.Parallel()
	m := newMirror(t, testmirror.WithArches(catalog.ArchAMD64))
	r := newResolver(t, m, []catalog.Option{catalog.WithKeyring(m.Keyring())})
	tests := []struct {
		spec    catalog.ImageSpec
		wantErr error
	}{
		{catalog.ImageSpec{Distro: "ubuntu", Version: "../../../etc/passwd", Arch: "amd64"}, catalog.ErrInvalidSpec},
		{catalog.ImageSpec{Distro: "ubuntu", Version: "24.04/../../x", Arch: "amd64"}, catalog.ErrInvalidSpec},
		{catalog.ImageSpec{Distro: "ubuntu", Version: "24.04%2f..", Arch: "amd64"}, catalog.ErrInvalidSpec},
		{catalog.ImageSpec{Distro: "ubuntu\x00", Version: "24.04", Arch: "amd64"}, catalog.ErrInvalidSpec},
		{catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: "amd64/../../x"}, catalog.ErrInvalidSpec},
		{catalog.ImageSpec{Distro: "ubuntu", Version: strings.Repeat("9", 1<<16), Arch: "amd64"}, catalog.ErrInvalidSpec},
		{catalog.ImageSpec{Distro: "ubuntu", Version: "99.99", Arch: "amd64"}, catalog.ErrUnknownVersion},
		{catalog.ImageSpec{Distro: "ubuntu", Version: "24.05", Arch: "amd64"}, catalog.ErrUnknownVersion},
		{catalog.ImageSpec{Distro: "alpine", Version: "3.20", Arch: "amd64"}, catalog.ErrUnsupportedDistro},
		{catalog.ImageSpec{Distro: "nixos", Version: "24.05", Arch: "amd64"}, catalog.ErrUnknownDistro},
	}
	for i, tt := range tests {
		t.Run(fmt.Sprint(i), func(t *testing.T) {
			_, err := r.Resolve(t.Context(), tt.spec)
			var re *resolve.Error
			if !errors.Is(err, tt.wantErr) || !errors.As(err, &re) || re.Op != resolve.OpPlan || re.Retryable {
				t.Fatalf("Resolve(%q) = %v; want %v at plan time", tt.spec, err, tt.wantErr)
			}
			if len(err.Error()) > 1024 {
				t.Fatalf("error message is %d bytes long", len(err.Error()))
			}
		})
	}
}

func TestUserCatalogAgainstMirror(t *testing.T) {
	t.Parallel()
	m := newMirror(t, testmirror.WithArches(catalog.ArchARM64))
	keyring := filepath.Base(m.KeyringFile())
	yamlCat := `
images:
  - distro: mirrorbuntu
    base_url: https://unused.example/
    versions: ["24.04"]
    arches: {arm64: arm64}
    boot_mode: kernel
    keyring: ` + keyring + `
    serials: {index: "releases/{version}/", directory: "release-{serial}", pattern: "[0-9]+"}
    assets:
      - role: disk
        url: releases/{version}/release-{serial}/ubuntu-{version}-server-cloudimg-{arch}.img
        manifest:
          url: releases/{version}/release-{serial}/SHA256SUMS
          signature: detached
          signature_url: releases/{version}/release-{serial}/SHA256SUMS.gpg
      - role: kernel
        url: releases/{version}/release-{serial}/unpacked/ubuntu-{version}-server-cloudimg-{arch}-vmlinuz-generic
        manifest:
          url: releases/{version}/release-{serial}/unpacked/SHA256SUMS
          signature: detached
          signature_url: releases/{version}/release-{serial}/unpacked/SHA256SUMS.gpg
`
	jsonCat := `{"images": [{"distro": "mirrorbuntu", "base_url": "https://unused.example/", "versions": ["24.04"],
  "arches": {"arm64": "arm64"}, "boot_mode": "kernel", "keyring": "` + keyring + `",
  "serials": {"index": "releases/{version}/", "directory": "release-{serial}", "pattern": "[0-9]+"},
  "assets": [
    {"role": "disk", "url": "releases/{version}/release-{serial}/ubuntu-{version}-server-cloudimg-{arch}.img",
     "manifest": {"url": "releases/{version}/release-{serial}/SHA256SUMS", "signature": "detached", "signature_url": "releases/{version}/release-{serial}/SHA256SUMS.gpg"}},
    {"role": "kernel", "url": "releases/{version}/release-{serial}/unpacked/ubuntu-{version}-server-cloudimg-{arch}-vmlinuz-generic",
     "manifest": {"url": "releases/{version}/release-{serial}/unpacked/SHA256SUMS", "signature": "detached", "signature_url": "releases/{version}/release-{serial}/unpacked/SHA256SUMS.gpg"}}]}]}`
	for _, tc := range []struct{ file, content string }{{"cat.yaml", yamlCat}, {"cat.json", jsonCat}} {
		t.Run(tc.file, func(t *testing.T) {
			// The keyring path is relative to the catalog file.
			p := filepath.Join(filepath.Dir(m.KeyringFile()), tc.file)
			if err := os.WriteFile(p, []byte(tc.content), 0o644); err != nil {
				t.Fatal(err)
			}
			r := newResolver(t, m, []catalog.Option{catalog.WithFile(p)})
			res, err := r.Resolve(t.Context(), catalog.ImageSpec{Distro: "mirrorbuntu", Version: "24.04", Arch: "arm64"})
			if err != nil {
				t.Fatal(err)
			}
			for _, role := range []catalog.Role{catalog.RoleDisk, catalog.RoleKernel} {
				a, ok := res.Asset(role)
				want := m.Path("ubuntu", "24.04", catalog.ArchARM64, role)
				if !ok || a.Digest != m.Digest(want) || a.URL != m.FileURL(want) || !a.Trust.Signed || a.Trust.Signer != m.Fingerprint() {
					t.Fatalf("%s: %+v", role, a)
				}
			}
		})
	}
}

// TestUnreachableHostIsNotRetriedHere: a mirror whose name does not resolve
// (offline, or a wrong name) fails at once, retryable, after one lookup per
// address family; the resolver's own pauses would only make a person wait.
func TestUnreachableHostIsNotRetriedHere(t *testing.T) {
	t.Parallel()
	dns := testutil.StartNXDomain(t)
	cat, err := catalog.New(catalog.WithMirror("http://mirror.vmprep-test.example/"))
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{DialContext: dns.Dialer().DialContext}}
	var notices []resolve.RetryNotice
	ctx := resolve.WithRetryNotify(t.Context(), func(n resolve.RetryNotice) { notices = append(notices, n) })
	r := resolve.New(cat, resolve.WithHTTPClient(hc), resolve.WithRetry(4, 50*time.Millisecond))
	_, err = r.Serials(ctx, catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: "amd64"})
	if err == nil || !strings.Contains(err.Error(), "no such host") || !resolve.IsRetryable(err) {
		t.Fatalf("Serials = %v; want a retryable error saying no such host", err)
	}
	if q := dns.Queries(); q == 0 || q > 2 {
		t.Errorf("%d DNS queries; want one lookup (A and AAAA), not one per retry", q)
	}
	if len(notices) != 0 {
		t.Errorf("retries announced for an unreachable host: %+v", notices)
	}
}

// TestRetryNotify: each retry of a transient failure is announced to the
// context that asked, with the URL, the cause, the pause and the attempt.
func TestRetryNotify(t *testing.T) {
	t.Parallel()
	m := newMirror(t, testmirror.WithArches(catalog.ArchARM64))
	dir := m.VersionDir("ubuntu", "24.04")
	m.SetFault(dir, testmirror.Fault{Status: http.StatusServiceUnavailable, Times: 2})
	r := newResolver(t, m, []catalog.Option{catalog.WithKeyring(m.Keyring())}, resolve.WithRetry(3, time.Millisecond))
	var notices []resolve.RetryNotice
	ctx := resolve.WithRetryNotify(t.Context(), func(n resolve.RetryNotice) { notices = append(notices, n) })
	if _, err := r.Serials(ctx, catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: "arm64"}); err != nil {
		t.Fatal(err)
	}
	if len(notices) != 2 {
		t.Fatalf("%d notices, want 2: %+v", len(notices), notices)
	}
	for i, n := range notices {
		if n.Attempt != i+2 || n.Attempts != 3 || n.In <= 0 || !strings.Contains(n.Err.Error(), "503") || !strings.Contains(n.URL, dir) {
			t.Errorf("notice %d: %+v", i, n)
		}
	}
	// Without the hook nothing is called (and nothing breaks).
	m.SetFault(dir, testmirror.Fault{Status: http.StatusServiceUnavailable, Times: 1})
	if _, err := r.Serials(t.Context(), catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: "arm64"}); err != nil {
		t.Fatal(err)
	}
}

// TestBusyServerIsAskedAgain: with a busy budget, a server that answers
// 503 (asking for a pause with Retry-After) and resets a connection is asked
// again past the attempt count until it serves, each retry announced
// open-ended; without the budget one try loses the run. A server with
// nothing listening is not a busy one: it fails after the count.
func TestBusyServerIsAskedAgain(t *testing.T) {
	t.Parallel()
	m := newMirror(t, testmirror.WithArches(catalog.ArchARM64))
	dir := m.VersionDir("ubuntu", "24.04")
	spec := catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: "arm64"}
	keyring := []catalog.Option{catalog.WithKeyring(m.Keyring())}

	m.SetFault(dir, testmirror.Fault{Status: http.StatusServiceUnavailable, Times: 3})
	if _, err := newResolver(t, m, keyring, resolve.WithRetry(1, time.Millisecond)).Serials(t.Context(), spec); err == nil || !strings.Contains(err.Error(), "503") {
		t.Fatalf("one try, no budget: %v; want the 503", err)
	}
	m.ClearFault(dir)

	before := m.Requests(dir)
	m.SetFault(dir, testmirror.Fault{Status: http.StatusServiceUnavailable, RetryAfter: "1", Times: 2})
	mp := m.ManifestPath("ubuntu", "24.04", catalog.ArchARM64, catalog.RoleKernel)
	m.SetFault(mp, testmirror.Fault{Reset: true, After: 5, Times: 1})
	r := newResolver(t, m, keyring, resolve.WithRetry(1, time.Millisecond), resolve.WithBusyBudget(time.Minute))
	var notices []resolve.RetryNotice
	ctx := resolve.WithRetryNotify(t.Context(), func(n resolve.RetryNotice) { notices = append(notices, n) })
	if _, err := r.Resolve(ctx, spec); err != nil {
		t.Fatalf("a busy server within the budget: %v", err)
	}
	if got := m.Requests(dir) - before; got != 3 {
		t.Errorf("listing requested %d times, want 3 (two 503s, then served)", got)
	}
	if len(notices) != 3 {
		t.Fatalf("%d retry notices, want 3: %+v", len(notices), notices)
	}
	for _, n := range notices[:2] {
		// Retry-After: 1 is honoured over the 1 ms backoff.
		if n.Attempts != 0 || n.In < time.Second {
			t.Errorf("notice %+v: want open-ended (Attempts 0) and the server's 1s pause", n)
		}
	}

	// Nothing listening: refused is not busy, so the count holds.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + ln.Addr().String() + "/"
	ln.Close()
	cat, err := catalog.New(catalog.WithMirror(closed))
	if err != nil {
		t.Fatal(err)
	}
	var refusedNotices []resolve.RetryNotice
	rctx := resolve.WithRetryNotify(t.Context(), func(n resolve.RetryNotice) { refusedNotices = append(refusedNotices, n) })
	if _, err := resolve.New(cat, resolve.WithRetry(1, time.Millisecond), resolve.WithBusyBudget(time.Minute)).Serials(rctx, spec); err == nil {
		t.Fatal("a mirror with nothing listening resolved")
	}
	if len(refusedNotices) != 0 {
		t.Errorf("a refused connection was retried on the busy budget: %+v", refusedNotices)
	}
}
