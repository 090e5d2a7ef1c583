package pipeline_test

import (
	"encoding/json"
	"os"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/messages"
	"github.com/vmprep/vmprep/pkg/place"
)

// sameResult compares two results but for what differs between any two
// answers: the request id and the time.
func sameResult(t *testing.T, what string, got, want messages.Result) {
	t.Helper()
	got.RequestID, want.RequestID = "", ""
	got.CompletedAt, want.CompletedAt = time.Time{}, time.Time{}
	g, _ := json.Marshal(got)
	w, _ := json.Marshal(want)
	if string(g) != string(w) {
		t.Errorf("%s:\n got  %s\n want %s", what, g, w)
	}
}

// TestWarmAnswersWhatThePipelineWould: once a request was prepared, Warm
// answers the same request from the store — the result a warm request
// through the stages gets, field for field (paths, digests, derived files,
// view, serial, signer, resolved_from) — without asking the mirror.
func TestWarmAnswersWhatThePipelineWould(t *testing.T) {
	t.Parallel()
	// A gzip'd kernel and a raw disk: both kinds of derived file.
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64), testmirror.WithGzipKernel(catalog.ArchAMD64))
	e := newEnv(t, m)
	e.deps.ResolutionMaxAge = time.Hour
	emb := e.start(t)
	cat := mirrorCatalog(t, m)
	spec := catalog.ImageSpec{Distro: "ubuntu", Version: "noble", Arch: catalog.ArchAMD64}
	for _, format := range []catalog.DiskFormat{catalog.FormatQCOW2, catalog.FormatRaw} {
		t.Run(string(format), func(t *testing.T) {
			req := func(id string) messages.PrepareRequest {
				return messages.PrepareRequest{RequestID: id + "-" + string(format), Spec: spec, Format: format}
			}
			if _, ok := pipeline.Warm(t.Context(), e.store, cat, time.Hour, place.HostName(), req("before")); ok {
				t.Fatal("Warm answered before anything was prepared")
			}
			cold := prepare(t, emb.Conn, req("cold"))
			if cold.Status != messages.ResultPrepared {
				t.Fatalf("cold: %+v", cold.Failure)
			}
			asked := m.Requests(m.VersionDir("ubuntu", "24.04")) + m.TotalContentRequests()
			warm, ok := pipeline.Warm(t.Context(), e.store, cat, time.Hour, place.HostName(), req("warm"))
			if !ok {
				t.Fatal("Warm did not answer a prepared request")
			}
			if now := m.Requests(m.VersionDir("ubuntu", "24.04")) + m.TotalContentRequests(); now != asked {
				t.Errorf("Warm asked the mirror %d times", now-asked)
			}
			if warm.RequestID != "warm-"+string(format) || warm.CompletedAt.IsZero() {
				t.Errorf("request id %q, completed at %v", warm.RequestID, warm.CompletedAt)
			}
			viaStages := prepare(t, emb.Conn, req("stages"))
			sameResult(t, "Warm against a warm request through the stages", warm, viaStages)
			cold.ResolvedFrom = messages.ResolvedFromCache
			sameResult(t, "Warm against the cold request (resolved from the network)", warm, cold)
			if format == catalog.FormatRaw && (warm.Files[catalog.RoleDisk].DerivedFrom.IsZero() || warm.Files[catalog.RoleKernel].DerivedFrom.IsZero()) {
				t.Errorf("raw disk and unpacked kernel should be derived files: %+v", warm.Files)
			}
		})
	}
}

func mirrorCatalog(t *testing.T, m *testmirror.Mirror) *catalog.Catalog {
	t.Helper()
	cat, err := catalog.New(catalog.WithMirror(m.URL), catalog.WithKeyring(m.Keyring()))
	if err != nil {
		t.Fatal(err)
	}
	return cat
}

// TestWarmDeclines: whatever the pipeline would have to do — ask the
// network, convert, fetch again, refuse — makes Warm decline, so that the
// caller starts the pipeline; a pinned build's record answers at any age.
func TestWarmDeclines(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64))
	e := newEnv(t, m)
	e.deps.ResolutionMaxAge = time.Hour
	emb := e.start(t)
	cat := mirrorCatalog(t, m)
	host := place.HostName()
	spec := catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}
	qcow2 := messages.PrepareRequest{RequestID: "q", Spec: spec, Format: catalog.FormatQCOW2}
	cold := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "cold", Spec: spec, Format: catalog.FormatQCOW2})
	if cold.Status != messages.ResultPrepared {
		t.Fatalf("cold: %+v", cold.Failure)
	}
	pinned := qcow2
	pinned.Spec.Serial = cold.Resolved.Serial
	with := func(f func(*messages.PrepareRequest)) messages.PrepareRequest {
		r := qcow2
		f(&r)
		return r
	}
	tests := []struct {
		name   string
		req    messages.PrepareRequest
		maxAge time.Duration
		want   bool
	}{
		{"prepared", qcow2, time.Hour, true},
		{"resolution older than the max age", qcow2, time.Nanosecond, false},
		{"no max age: always ask the network", qcow2, 0, false},
		{"pinned build: its record at any age", pinned, 0, true},
		{"raw disk not converted yet", with(func(r *messages.PrepareRequest) { r.Format = catalog.FormatRaw }), time.Hour, false},
		{"a target", with(func(r *messages.PrepareRequest) { r.Target = host }), time.Hour, false},
		{"the client converts", with(func(r *messages.PrepareRequest) { r.ClientConverts = true }), time.Hour, false},
		{"an image not in the catalog", with(func(r *messages.PrepareRequest) { r.Spec.Distro = "plan9" }), time.Hour, false},
		{"an invalid request id", with(func(r *messages.PrepareRequest) { r.RequestID = "a b" }), time.Hour, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res, ok := pipeline.Warm(t.Context(), e.store, cat, tt.maxAge, host, tt.req)
			if ok != tt.want {
				t.Fatalf("Warm = %v, want %v", ok, tt.want)
			}
			if ok && (res.Status != messages.ResultPrepared || res.ResolvedFrom != messages.ResolvedFromCache) {
				t.Errorf("result %+v", res)
			}
		})
	}

	// A stored file that no longer matches its digest is quarantined, as
	// the verifier would, and the pipeline fetches it again.
	blob := cold.Files[catalog.RoleInitramfs].Path
	if err := os.Chmod(blob, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(blob, []byte("not the initramfs"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, ok := pipeline.Warm(t.Context(), e.store, cat, time.Hour, host, qcow2); ok {
		t.Fatal("Warm answered with a corrupt file in the store")
	}
	if _, err := os.Stat(blob); !os.IsNotExist(err) {
		t.Errorf("the corrupt blob was not quarantined: %v", err)
	}
	if res := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "again", Spec: spec, Format: catalog.FormatQCOW2}); res.Status != messages.ResultPrepared {
		t.Fatalf("after quarantine: %+v", res.Failure)
	}
	if _, ok := pipeline.Warm(t.Context(), e.store, cat, time.Hour, host, qcow2); !ok {
		t.Error("Warm did not answer once the pipeline fetched the file again")
	}
}
