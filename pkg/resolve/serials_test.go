package resolve_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/resolve"
)

// serialsMirror publishes four Ubuntu builds; natural order puts .10 after .2.
func serialsMirror(t *testing.T) *testmirror.Mirror {
	return newMirror(t, testmirror.WithArches(catalog.ArchAMD64),
		testmirror.WithSerials("20260901", "20260926.10", "20260926", "20260926.2"))
}

var amd64Noble = catalog.ImageSpec{Distro: "ubuntu", Version: "noble", Arch: catalog.ArchAMD64}

func TestSerialsNewestFirst(t *testing.T) {
	t.Parallel()
	m := serialsMirror(t)
	r := newResolver(t, m, []catalog.Option{catalog.WithKeyring(m.Keyring())})
	serials, err := r.Serials(t.Context(), amd64Noble)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range serials {
		names = append(names, s.Serial)
		if !strings.HasSuffix(s.URL, "/releases/24.04/release-"+s.Serial+"/") {
			t.Errorf("%s: URL %s", s.Serial, s.URL)
		}
	}
	if want := []string{"20260926.10", "20260926.2", "20260926", "20260901"}; !slices.Equal(names, want) {
		t.Fatalf("serials %v, want %v", names, want)
	}
	// The date is the listing's date column (the mirror dates each build by its serial).
	if got := serials[3].Date; !got.Equal(time.Date(2026, 9, 1, 12, 0, 0, 0, time.UTC)) {
		t.Errorf("date of 20260901 = %v", got)
	}
	if _, err := r.Serials(t.Context(), catalog.ImageSpec{Distro: "fedora", Version: "41", Arch: "amd64"}); !errors.Is(err, catalog.ErrNoSerials) {
		t.Errorf("fedora: %v, want ErrNoSerials", err)
	}
}

func TestResolveSerials(t *testing.T) {
	t.Parallel()
	m := serialsMirror(t)
	r := newResolver(t, m, []catalog.Option{catalog.WithKeyring(m.Keyring())})
	check := func(t *testing.T, res catalog.Resolution, serial string) {
		t.Helper()
		if res.Spec.Serial != serial || res.Spec.Version != "24.04" {
			t.Fatalf("resolved %v, want serial %s", res.Spec, serial)
		}
		for _, a := range res.Assets {
			p := m.SerialPath("ubuntu", "24.04", serial, catalog.ArchAMD64, a.Role)
			if a.URL != m.FileURL(p) || a.Digest != m.Digest(p) {
				t.Errorf("%s = %s %s; want %s %s", a.Role, a.URL, a.Digest, m.FileURL(p), m.Digest(p))
			}
			mp := m.SerialManifestPath("ubuntu", "24.04", serial, catalog.ArchAMD64, a.Role)
			if a.Trust.ManifestURL != m.FileURL(mp) || a.Trust.SignatureURL != m.FileURL(mp+".gpg") || !a.Trust.Signed {
				t.Errorf("%s trust %+v, want manifest %s", a.Role, a.Trust, mp)
			}
		}
	}
	t.Run("newest", func(t *testing.T) {
		res, err := r.Resolve(t.Context(), amd64Noble)
		if err != nil {
			t.Fatal(err)
		}
		check(t, res, "20260926.10")
		if n := m.Requests(m.VersionDir("ubuntu", "24.04")); n != 1 {
			t.Errorf("listing requested %d times, want 1", n)
		}
	})
	t.Run("pinned older", func(t *testing.T) {
		spec := amd64Noble
		spec.Serial = "20260901"
		res, err := r.Resolve(t.Context(), spec)
		if err != nil {
			t.Fatal(err)
		}
		check(t, res, "20260901")
		newest, _ := r.Resolve(t.Context(), amd64Noble)
		if d, _ := res.Asset(catalog.RoleDisk); d.Digest == func() catalog.Asset { a, _ := newest.Asset(catalog.RoleDisk); return a }().Digest {
			t.Error("the pinned build has the newest build's disk")
		}
	})
	// Nothing is ever read from the moving release/ directory.
	for _, role := range []catalog.Role{catalog.RoleDisk, catalog.RoleKernel} {
		mp := m.SerialManifestPath("ubuntu", "24.04", "", catalog.ArchAMD64, role)
		if n := m.Requests(mp) + m.Requests(mp+".gpg"); n != 0 {
			t.Errorf("%s requested %d times", mp, n)
		}
	}
	t.Run("unknown serial", func(t *testing.T) {
		spec := amd64Noble
		spec.Serial = "20250101"
		_, err := r.Resolve(t.Context(), spec)
		var use *resolve.UnknownSerialError
		if !errors.Is(err, resolve.ErrUnknownSerial) || !errors.As(err, &use) || resolve.IsRetryable(err) {
			t.Fatalf("Resolve = %v; want a permanent ErrUnknownSerial", err)
		}
		if !slices.Equal(use.Available, []string{"20260926.10", "20260926.2", "20260926", "20260901"}) {
			t.Errorf("available %v", use.Available)
		}
		for _, s := range append(use.Available, "20250101") {
			if !strings.Contains(err.Error(), s) {
				t.Errorf("message %q does not name %s", err, s)
			}
		}
	})
	if n := m.TotalContentRequests(); n != 0 {
		t.Errorf("resolution fetched %d content files", n)
	}
}

// A mirror given as …/releases/ instead of its root: the 404 says so.
func TestMirrorEndingInReleases(t *testing.T) {
	t.Parallel()
	m := newMirror(t, testmirror.WithArches(catalog.ArchAMD64))
	cat, err := catalog.New(catalog.WithMirror(m.URL+"releases/"), catalog.WithKeyring(m.Keyring()))
	if err != nil {
		t.Fatal(err)
	}
	r := resolve.New(cat, resolve.WithRetry(1, time.Millisecond))
	for _, spec := range []catalog.ImageSpec{amd64Noble, {Distro: "ubuntu", Version: "24.04", Arch: "amd64", Serial: testmirror.DefaultUbuntuSerial}} {
		_, err = r.Resolve(t.Context(), spec)
		if !errors.Is(err, resolve.ErrNotFound) || !strings.Contains(err.Error(), `repeats "releases/releases"`) ||
			!strings.Contains(err.Error(), "--mirror must be the root that contains releases/") || !strings.Contains(err.Error(), "e.g. "+m.URL+",") {
			t.Errorf("Resolve(%v) = %v; want a 404 that explains the mirror form", spec, err)
		}
	}
	// A plain 404 gets no such hint.
	good := newResolver(t, m, []catalog.Option{catalog.WithKeyring(m.Keyring())})
	_, err = good.Resolve(t.Context(), catalog.ImageSpec{Distro: "ubuntu", Version: "22.04", Arch: "amd64"})
	if !errors.Is(err, resolve.ErrNotFound) || strings.Contains(err.Error(), "--mirror") {
		t.Errorf("missing version: %v", err)
	}
}

// Listings that are not HTML, or too large, are refused without being read.
func TestListingRefused(t *testing.T) {
	t.Parallel()
	m := newMirror(t, testmirror.WithArches(catalog.ArchAMD64))
	listing := "/" + m.VersionDir("ubuntu", "24.04") + "/"
	var mode atomic.Value
	var written atomic.Int64
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path != listing {
			m.ServeHTTP(w, req)
			return
		}
		switch mode.Load().(string) {
		case "json":
			w.Header().Set("Content-Type", "application/json")
			fmt.Fprint(w, `{"error": "no"}`)
		case "none":
			w.Header()["Content-Type"] = nil // no sniffing either
			fmt.Fprint(w, `<a href="release-20261120/">release-20261120/</a>`)
		case "huge", "huge-announced":
			w.Header().Set("Content-Type", "text/html")
			if mode.Load() == "huge-announced" {
				w.Header().Set("Content-Length", fmt.Sprint(64<<20))
			}
			chunk := []byte(strings.Repeat(`<a href="release-20261120/">x</a>`, 1000))
			for written.Load() < 64<<20 {
				n, err := w.Write(chunk)
				written.Add(int64(n))
				if err != nil {
					return
				}
			}
		}
	}))
	t.Cleanup(front.Close)
	cat, err := catalog.New(catalog.WithMirror(front.URL+"/"), catalog.WithKeyring(m.Keyring()))
	if err != nil {
		t.Fatal(err)
	}
	r := resolve.New(cat, resolve.WithRetry(3, time.Millisecond))
	for _, tt := range []struct {
		mode string
		want error
	}{
		{"json", resolve.ErrNotListing},
		{"none", resolve.ErrNotListing},
		{"huge", resolve.ErrTooLarge},
		{"huge-announced", resolve.ErrTooLarge},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			mode.Store(tt.mode)
			written.Store(0)
			_, err := r.Serials(t.Context(), amd64Noble)
			var re *resolve.Error
			if !errors.Is(err, tt.want) || !errors.As(err, &re) || re.Op != resolve.OpSerials || re.Retryable {
				t.Fatalf("Serials = %v; want a permanent %v", err, tt.want)
			}
			if n := written.Load(); n > 32<<20 {
				t.Errorf("the server could write %d bytes of the listing", n)
			}
		})
	}
}
