package pipeline_test

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/signtest"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/messages"
	"github.com/vmprep/vmprep/pkg/place"
	"github.com/vmprep/vmprep/pkg/resolve"
	"github.com/vmprep/vmprep/pkg/signature"
	"github.com/vmprep/vmprep/pkg/store"
)

// mirrorRoots are the trust roots of spec under m's catalog (m's URL and key).
func mirrorRoots(t *testing.T, m *testmirror.Mirror, spec catalog.ImageSpec) catalog.TrustRoots {
	t.Helper()
	roots, err := mirrorCatalog(t, m).Roots(spec)
	if err != nil {
		t.Fatal(err)
	}
	return roots
}

// rootsEnv is e with another catalog: the mirror at mirrorURL, trusting kr.
// It shares e's store, as a later run on the same host would.
func rootsEnv(t *testing.T, e *env, mirrorURL string, kr *signature.Keyring) (*env, *catalog.Catalog) {
	t.Helper()
	cat, err := catalog.New(catalog.WithMirror(mirrorURL), catalog.WithKeyring(kr))
	if err != nil {
		t.Fatal(err)
	}
	other := *e
	other.deps.Resolver = resolve.New(cat, resolve.WithLogger(quietLogger()), resolve.WithRetry(2, 10*time.Millisecond))
	return &other, cat
}

// mirrorAsked counts the requests m answered for spec's listing, its disk's
// manifest and content files.
func mirrorAsked(m *testmirror.Mirror) int {
	return m.Requests(m.VersionDir("ubuntu", "24.04")) + m.Requests(m.ManifestPath("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)) + m.TotalContentRequests()
}

// viewRoots reads the trust roots a view says its links' build rests on.
func viewRoots(t *testing.T, view string) catalog.TrustRoots {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(view, store.ViewRootsName))
	if err != nil {
		t.Fatalf("the view names no roots: %v", err)
	}
	var r catalog.TrustRoots
	if err := json.Unmarshal(b, &r); err != nil {
		t.Fatalf("view roots %s: %v", b, err)
	}
	return r
}

// TestTrustRootsBindStoredResolutions: a build resolved against mirror A
// with A's throwaway key answers — from the store, without the network,
// through the stages and through Warm — only requests under the same roots.
// Under another keyring the image is resolved again and verified with that
// keyring (A's manifests fail it), and offline the request fails saying the
// cached build was resolved under other roots; under another mirror the
// files are resolved from that mirror.
func TestTrustRootsBindStoredResolutions(t *testing.T) {
	t.Parallel()
	a := smallMirror(t, testmirror.DefaultUbuntuSerial)
	e := newEnv(t, a)
	e.deps.ResolutionMaxAge = time.Hour // the same roots reuse the record without asking
	req := func(id string) messages.PrepareRequest {
		return messages.PrepareRequest{RequestID: id, Spec: noble, Format: catalog.FormatQCOW2}
	}
	warm := func(cat *catalog.Catalog, id string) bool {
		_, ok := pipeline.Warm(t.Context(), e.store, cat, time.Hour, place.HostName(), req(id))
		return ok
	}

	embA := e.start(t)
	cold := prepare(t, embA.Conn, req("a-cold"))
	checkBuild(t, a, cold, testmirror.DefaultUbuntuSerial)
	if cold.Signer != a.Fingerprint() {
		t.Fatalf("signer %s, want mirror A's key %s", cold.Signer, a.Fingerprint())
	}
	if r := viewRoots(t, cold.View); !r.Equal(mirrorRoots(t, a, noble)) {
		t.Errorf("the view names roots %s, want mirror A's", r)
	}
	// The same roots: warm, no network.
	asked := mirrorAsked(a)
	again := prepare(t, embA.Conn, req("a-again"))
	checkBuild(t, a, again, testmirror.DefaultUbuntuSerial)
	if again.ResolvedFrom != messages.ResolvedFromCache || mirrorAsked(a) != asked {
		t.Errorf("same roots: resolved from %s, mirror A asked %d more times", again.ResolvedFrom, mirrorAsked(a)-asked)
	}
	if !warm(mirrorCatalog(t, a), "a-warm") {
		t.Error("Warm declined a request under the roots the build was resolved under")
	}
	embA.Close()

	t.Run("other keyring", func(t *testing.T) {
		other := signtest.NewKey(t, "another key")
		eb, cat := rootsEnv(t, e, a.URL, other.Keyring())
		// Always ask the network: the fallback to stored builds when it
		// fails is what must not take mirror A's.
		eb.deps.ResolutionMaxAge = 0
		if warm(cat, "b-warm") {
			t.Error("Warm answered with a build that another key vouched for")
		}
		emb := eb.start(t)
		t.Cleanup(emb.Close)
		asked := a.Requests(a.ManifestPath("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk))
		res := prepare(t, emb.Conn, req("b-online"))
		switch {
		case res.Status != messages.ResultFailed || res.Failure == nil:
			t.Errorf("under another keyring, mirror A's build was prepared: %s signed by %s", res.Status, res.Signer)
		case !strings.Contains(res.Failure.Cause, "signature") && !strings.Contains(res.Failure.Cause, "key"):
			t.Errorf("cause %q says nothing of the signature", res.Failure.Cause)
		}
		// Resolved again, and A's manifests fail the new keyring.
		if a.Requests(a.ManifestPath("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)) == asked {
			t.Error("the manifest was not fetched again under the new keyring")
		}

		// Offline: the listing is unreachable. The stored build is not taken.
		listing := a.VersionDir("ubuntu", "24.04")
		a.SetFault(listing, testmirror.Fault{Status: 503, Times: 1000})
		defer a.ClearFault(listing)
		res = prepare(t, emb.Conn, req("b-offline"))
		if res.Status != messages.ResultFailed || res.Failure == nil {
			t.Fatalf("offline under another keyring, the stored build was used: %s signed by %s", res.Status, res.Signer)
		}
		for _, want := range []string{"the cached build of ubuntu 24.04 amd64", "resolved under other trust roots", "keyring " + a.Fingerprint() + " (now keyring " + other.Fingerprint() + ")", "cannot re-resolve offline", "503"} {
			if !strings.Contains(res.Failure.Cause, want) {
				t.Errorf("cause %q does not say %q", res.Failure.Cause, want)
			}
		}

		// A pinned build's record is bound the same way: offline, its
		// directory unreachable, the build A's key vouched for is not taken.
		pinnedManifest := a.SerialManifestPath("ubuntu", "24.04", testmirror.DefaultUbuntuSerial, catalog.ArchAMD64, catalog.RoleDisk)
		a.SetFault(pinnedManifest, testmirror.Fault{Status: 503, Times: 1000})
		defer a.ClearFault(pinnedManifest)
		pinned := req("b-pinned-offline")
		pinned.Spec = withSerial(noble, testmirror.DefaultUbuntuSerial)
		res = prepare(t, emb.Conn, pinned)
		if res.Status != messages.ResultFailed || res.Failure == nil {
			t.Fatalf("offline under another keyring, the pinned build's record was used: %s signed by %s", res.Status, res.Signer)
		}
		for _, want := range []string{"the cached build of ubuntu 24.04 amd64 (serial " + testmirror.DefaultUbuntuSerial + ")", "resolved under other trust roots", "cannot re-resolve offline"} {
			if !strings.Contains(res.Failure.Cause, want) {
				t.Errorf("pinned: cause %q does not say %q", res.Failure.Cause, want)
			}
		}
	})

	t.Run("same key, another mirror", func(t *testing.T) {
		// Mirror A's files, same key and digests, served from another URL.
		var mu sync.Mutex
		asked := map[string]int{}
		files := http.FileServer(http.Dir(a.Dir))
		copyOfA := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			asked[r.URL.Path]++
			mu.Unlock()
			files.ServeHTTP(w, r)
		}))
		t.Cleanup(copyOfA.Close)
		eb, cat := rootsEnv(t, e, copyOfA.URL+"/", a.Keyring())
		if warm(cat, "c-warm") {
			t.Error("Warm answered with URLs of another mirror")
		}
		emb := eb.start(t)
		t.Cleanup(emb.Close)
		askedA := mirrorAsked(a)
		res := prepare(t, emb.Conn, req("c-online"))
		if res.Status != messages.ResultPrepared {
			t.Fatalf("status %s: %+v", res.Status, res.Failure)
		}
		for role, f := range res.Files {
			if !strings.HasPrefix(f.URL, copyOfA.URL+"/") || f.Digest != cold.Files[role].Digest {
				t.Errorf("%s: %s from %s; want %s (the same build) from the mirror configured (%s)", role, f.Digest, f.URL, cold.Files[role].Digest, copyOfA.URL)
			}
		}
		mu.Lock()
		listed, manifests := asked["/"+a.VersionDir("ubuntu", "24.04")+"/"], asked["/"+a.ManifestPath("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)]
		disk := asked["/"+a.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)]
		mu.Unlock()
		if res.ResolvedFrom != messages.ResolvedFromNetwork || listed == 0 || manifests == 0 {
			t.Errorf("resolved from %s; the configured mirror was asked for the listing %d times, the manifest %d times", res.ResolvedFrom, listed, manifests)
		}
		// The files themselves are the digests the new resolution names:
		// reused from the store, fetched from neither mirror.
		if n := mirrorAsked(a) - askedA; n != 0 {
			t.Errorf("mirror A asked %d times for a request configured for another mirror", n)
		}
		if disk != 0 {
			t.Errorf("the stored disk was downloaded again (%d requests), though its digest is the one resolved", disk)
		}
	})

	t.Run("other mirror", func(t *testing.T) {
		b := smallMirror(t, testmirror.DefaultUbuntuSerial)
		eb, cat := rootsEnv(t, e, b.URL, b.Keyring())
		if warm(cat, "m-warm") {
			t.Error("Warm answered with URLs of another mirror")
		}
		emb := eb.start(t)
		t.Cleanup(emb.Close)
		askedA := mirrorAsked(a)
		res := prepare(t, emb.Conn, req("m-online"))
		checkBuild(t, b, res, testmirror.DefaultUbuntuSerial)
		if res.ResolvedFrom != messages.ResolvedFromNetwork || res.Signer != b.Fingerprint() {
			t.Errorf("resolved from %s, signed by %s; want the network and mirror B's key %s", res.ResolvedFrom, res.Signer, b.Fingerprint())
		}
		if r := viewRoots(t, res.View); !r.Equal(mirrorRoots(t, b, noble)) {
			t.Errorf("the view, relinked to B's build, names roots %s", r)
		}
		for role, f := range res.Files {
			if !strings.HasPrefix(f.URL, b.URL) {
				t.Errorf("%s from %s, not from mirror B (%s)", role, f.URL, b.URL)
			}
		}
		if b.Requests(b.VersionDir("ubuntu", "24.04")) == 0 || b.TotalContentRequests() == 0 {
			t.Errorf("mirror B: %d listing requests, %d content requests", b.Requests(b.VersionDir("ubuntu", "24.04")), b.TotalContentRequests())
		}
		if n := mirrorAsked(a) - askedA; n != 0 {
			t.Errorf("mirror A asked %d times for a request configured for mirror B", n)
		}
		// Now mirror B's roots are warm. Mirror A's build record is kept
		// under A's roots: a request pinned to it under A's roots is warm.
		if !warm(cat, "m-warm-after") {
			t.Error("Warm declined under mirror B's roots after B's build was prepared")
		}
		pinned := req("a-pinned")
		pinned.Spec = withSerial(noble, testmirror.DefaultUbuntuSerial)
		if _, ok := pipeline.Warm(t.Context(), e.store, mirrorCatalog(t, a), time.Hour, place.HostName(), pinned); !ok {
			t.Error("Warm declined a pinned build under the roots it was resolved under")
		}
		if got, ok := pipeline.Warm(t.Context(), e.store, cat, time.Hour, place.HostName(), pinned); !ok || got.Files[catalog.RoleDisk].Digest != res.Files[catalog.RoleDisk].Digest {
			t.Errorf("pinned under B's roots: warm %v, disk %s; want B's disk %s", ok, got.Files[catalog.RoleDisk].Digest, res.Files[catalog.RoleDisk].Digest)
		}
	})
}
