package resolve_test

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/resolve"
)

// A mirror in the classic layout holds only release/: its build is read
// from there, labelled with build-info.txt's serial when it has one.
func TestClassicLayout(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		buildInfo bool
		serial    string // the label expected ("" when unpinned)
	}{
		{"with build-info", true, "20260926"},
		{"without build-info", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := newMirror(t, testmirror.WithArches(catalog.ArchAMD64), testmirror.WithSerials("20260901", "20260926"),
				testmirror.WithClassicLayout(tc.buildInfo))
			r := newResolver(t, m, []catalog.Option{catalog.WithKeyring(m.Keyring())})

			serials, err := r.Serials(t.Context(), amd64Noble)
			switch {
			case tc.buildInfo && (err != nil || len(serials) != 1 || serials[0].Serial != tc.serial || !serials[0].Unpinned ||
				!strings.HasSuffix(serials[0].URL, "/releases/24.04/release/")):
				t.Fatalf("serials %+v, %v; want the one unpinned build %s in release/", serials, err, tc.serial)
			case !tc.buildInfo && (!errors.Is(err, resolve.ErrUnpinned) || !errors.Is(err, catalog.ErrNoSerials) ||
				!strings.Contains(err.Error(), "release/unpacked/build-info.txt")):
				t.Fatalf("serials %+v, %v; want ErrUnpinned (and ErrNoSerials) naming build-info.txt", serials, err)
			}

			res, err := r.Resolve(t.Context(), amd64Noble)
			if err != nil {
				t.Fatal(err)
			}
			if res.Spec.Serial != tc.serial || res.Unpinned != (tc.serial == "") || len(res.Assets) != 3 {
				t.Fatalf("resolved %v (unpinned %v) with %d assets; want serial %q", res.Spec, res.Unpinned, len(res.Assets), tc.serial)
			}
			for _, a := range res.Assets {
				p := m.Path("ubuntu", "24.04", catalog.ArchAMD64, a.Role)
				if a.URL != m.FileURL(p) || a.Digest != m.Digest(p) || !a.Trust.Signed {
					t.Errorf("%s: %s %s signed=%v; want %s %s, signed", a.Role, a.URL, a.Digest, a.Trust.Signed, m.FileURL(p), m.Digest(p))
				}
			}

			// Pinning: the build it holds (when named) resolves; any other
			// serial fails saying what there is.
			pinned := amd64Noble
			pinned.Serial = "20260926"
			res, err = r.Resolve(t.Context(), pinned)
			if tc.buildInfo {
				if err != nil || res.Spec.Serial != "20260926" || !strings.Contains(res.Assets[0].URL, "/release/") {
					t.Fatalf("pinned to the build release/ holds: %v, %v", res.Spec, err)
				}
				pinned.Serial = "20260901"
				_, err = r.Resolve(t.Context(), pinned)
				if !errors.Is(err, resolve.ErrUnknownSerial) || !strings.Contains(err.Error(), "available, newest first: 20260926") {
					t.Fatalf("pinned to another build: %v; want ErrUnknownSerial naming 20260926", err)
				}
			} else if !errors.Is(err, resolve.ErrUnpinned) || !strings.Contains(err.Error(), "cannot be pinned") || resolve.IsRetryable(err) {
				t.Fatalf("pinned on an unpinned mirror: %v; want a permanent ErrUnpinned saying it cannot be pinned", err)
			}
		})
	}
}

// A release/ repointed while it was read is not labelled with the serial it
// had before: the resolution fails, retryably, naming both builds.
func TestClassicLayoutRepointed(t *testing.T) {
	t.Parallel()
	m := newMirror(t, testmirror.WithArches(catalog.ArchAMD64), testmirror.WithSerials("20260926"), testmirror.WithClassicLayout(true))
	// A front that answers build-info with the next build's serial from its
	// second read on: release/ moved on between the listing and the check.
	info := "/" + testmirror.BuildInfoPath("24.04")
	var reads atomic.Int32
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.URL.Path == info && reads.Add(1) > 1 {
			_, _ = io.WriteString(w, "serial=20261001\n")
			return
		}
		m.ServeHTTP(w, req)
	}))
	t.Cleanup(front.Close)
	cat, err := catalog.New(catalog.WithMirror(front.URL+"/"), catalog.WithKeyring(m.Keyring()))
	if err != nil {
		t.Fatal(err)
	}
	r := resolve.New(cat, resolve.WithRetry(1, time.Millisecond))
	_, err = r.Resolve(t.Context(), amd64Noble)
	if !resolve.IsRetryable(err) || !strings.Contains(err.Error(), "repointed from build 20260926 to 20261001") {
		t.Fatalf("release/ repointed mid-resolution: %v; want a retryable error naming both builds", err)
	}
}
