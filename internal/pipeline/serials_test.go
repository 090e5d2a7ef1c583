package pipeline_test

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/messages"
	"github.com/vmprep/vmprep/pkg/store"
)

// smallMirror publishes Ubuntu 24.04 amd64 builds with small files.
func smallMirror(t *testing.T, serials ...string) *testmirror.Mirror {
	return testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64), testmirror.WithSerials(serials...),
		testmirror.WithDiskSize(4<<20, 256<<10), testmirror.WithKernelSize(8<<10, 8<<10))
}

var noble = catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}

func withSerial(s catalog.ImageSpec, serial string) catalog.ImageSpec { s.Serial = serial; return s }

// checkBuild fails unless res is a prepared result of the given build.
func checkBuild(t *testing.T, m *testmirror.Mirror, res messages.Result, serial string) {
	t.Helper()
	if res.Status != messages.ResultPrepared {
		t.Fatalf("status %s: %+v", res.Status, res.Failure)
	}
	if res.Resolved == nil || *res.Resolved != withSerial(noble, serial) {
		t.Fatalf("resolved %v, want %v", res.Resolved, withSerial(noble, serial))
	}
	for role, f := range res.Files {
		p := m.SerialPath("ubuntu", "24.04", serial, catalog.ArchAMD64, role)
		if f.Digest != m.Digest(p) || f.URL != m.FileURL(p) {
			t.Errorf("%s = %s from %s; want build %s: %s from %s", role, f.Digest, f.URL, serial, m.Digest(p), m.FileURL(p))
		}
	}
	b, err := os.ReadFile(filepath.Join(res.View, store.ViewSerialName))
	if err != nil || string(b) != serial+"\n" {
		t.Errorf("view serial file = %q, %v; want %s", b, err, serial)
	}
}

func TestSerialsNewestPinnedAndMissing(t *testing.T) {
	t.Parallel()
	m := smallMirror(t, "20260901", "20260926")
	e := newEnv(t, m)
	emb := e.start(t)

	newest := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "newest", Spec: noble, Format: catalog.FormatQCOW2})
	checkBuild(t, m, newest, "20260926")
	if newest.Spec != noble || newest.ResolvedFrom != messages.ResolvedFromNetwork {
		t.Errorf("spec %v (want the request's %v), from %s", newest.Spec, noble, newest.ResolvedFrom)
	}

	// Asking again (MaxAge 0) reads the listing only: the newest build is
	// already verified, from a directory that never changes.
	manifests := func() int {
		n := 0
		for _, role := range []catalog.Role{catalog.RoleDisk, catalog.RoleKernel} {
			mp := m.SerialManifestPath("ubuntu", "24.04", "20260926", catalog.ArchAMD64, role)
			n += m.Requests(mp) + m.Requests(mp+".gpg")
		}
		return n
	}
	listings, fetched := m.Requests(m.VersionDir("ubuntu", "24.04")), manifests()
	again := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "again", Spec: noble, Format: catalog.FormatQCOW2})
	checkBuild(t, m, again, "20260926")
	if again.ResolvedFrom != messages.ResolvedFromCache || manifests() != fetched || m.Requests(m.VersionDir("ubuntu", "24.04")) != listings+1 {
		t.Errorf("repeat: from %s, %d manifest/signature and %d listing requests; want the record after one listing",
			again.ResolvedFrom, manifests()-fetched, m.Requests(m.VersionDir("ubuntu", "24.04"))-listings)
	}

	older := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "older", Spec: withSerial(noble, "20260901"), Format: catalog.FormatQCOW2})
	checkBuild(t, m, older, "20260901")

	// One resolution per rollout: a newer build appears, and a request
	// carrying the serial an earlier result returned still gets that build,
	// from its stored record, without asking the mirror.
	m.AddSerial("ubuntu", "24.04", "20261001")
	manifest := m.SerialManifestPath("ubuntu", "24.04", "20260926", catalog.ArchAMD64, catalog.RoleDisk)
	before := m.Requests(manifest)
	rollout := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "rollout-host-2", Spec: *newest.Resolved, Format: catalog.FormatQCOW2})
	checkBuild(t, m, rollout, "20260926")
	if rollout.ResolvedFrom != messages.ResolvedFromCache || m.Requests(manifest) != before {
		t.Errorf("pinned repeat: from %s, %d manifest requests; want the stored record", rollout.ResolvedFrom, m.Requests(manifest)-before)
	}
	if rollout.Files[catalog.RoleDisk].Path != newest.Files[catalog.RoleDisk].Path {
		t.Errorf("rollout host got disk %s, first host %s", rollout.Files[catalog.RoleDisk].Path, newest.Files[catalog.RoleDisk].Path)
	}
	// Unpinned requests move on to the new build.
	checkBuild(t, m, prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "newer", Spec: noble, Format: catalog.FormatQCOW2}), "20261001")

	// Nothing was read from the moving release/ directory.
	for _, role := range []catalog.Role{catalog.RoleDisk, catalog.RoleKernel, catalog.RoleInitramfs} {
		if n := m.Requests(m.MovingPath("ubuntu", "24.04", catalog.ArchAMD64, role)); n != 0 {
			t.Errorf("release/ %s requested %d times", role, n)
		}
	}

	missing := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "missing", Spec: withSerial(noble, "20250101"), Format: catalog.FormatQCOW2})
	if missing.Status != messages.ResultFailed || missing.Failure == nil || missing.Failure.Stage != messages.StageResolver {
		t.Fatalf("missing serial: %+v", missing)
	}
	for _, want := range []string{"20250101", "not published", "20261001", "20260926", "20260901"} {
		if !strings.Contains(missing.Failure.Cause, want) {
			t.Errorf("cause %q does not mention %q", missing.Failure.Cause, want)
		}
	}
}

func TestRollbackIsNeverSilent(t *testing.T) {
	t.Parallel()
	m := smallMirror(t, "20260901", "20260926")
	e := newEnv(t, m)
	emb := e.start(t)
	before := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "before", Spec: noble, Format: catalog.FormatQCOW2})
	checkBuild(t, m, before, "20260926")

	if gone := m.RollBack("ubuntu", "24.04"); gone != "20260926" {
		t.Fatalf("rolled back %s", gone)
	}
	older := m.SerialManifestPath("ubuntu", "24.04", "20260901", catalog.ArchAMD64, catalog.RoleDisk)
	// The newer build is stored: it is kept, and the older one not even looked at.
	kept := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "after", Spec: noble, Format: catalog.FormatQCOW2})
	if kept.Status != messages.ResultPrepared || kept.Resolved == nil || kept.Resolved.Serial != "20260926" {
		t.Fatalf("after the rollback: %+v", kept)
	}
	for role, f := range before.Files {
		if kept.Files[role].Digest != f.Digest {
			t.Errorf("%s: %s after the rollback, %s before", role, kept.Files[role].Digest, f.Digest)
		}
	}
	if kept.ResolvedFrom != messages.ResolvedFromCache || m.Requests(older) != 0 {
		t.Errorf("from %s, %d requests for the older manifest", kept.ResolvedFrom, m.Requests(older))
	}

	// A host that verified a newer build it no longer has (its records were
	// removed) refuses the rollback and says how to pin on purpose.
	if _, err := e.store.RaiseNewestSerial(context.Background(), noble, mirrorRoots(t, m, noble), "20261001", time.Now()); err != nil {
		t.Fatal(err)
	}
	refused := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "refused", Spec: noble, Format: catalog.FormatQCOW2})
	if refused.Status != messages.ResultFailed || refused.Failure == nil {
		t.Fatalf("rolled-back mirror: %+v", refused)
	}
	for _, want := range []string{"rolled back", "20260901", "20261001", "--serial 20260901"} {
		if !strings.Contains(refused.Failure.Cause, want) {
			t.Errorf("cause %q does not mention %q", refused.Failure.Cause, want)
		}
	}
	if m.Requests(older) != 0 {
		t.Errorf("the older build's manifest was fetched %d times", m.Requests(older))
	}
	// Pinned on purpose, the older build is prepared.
	checkBuild(t, m, prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "on-purpose", Spec: withSerial(noble, "20260901"), Format: catalog.FormatQCOW2}), "20260901")
	if mark, err := e.store.NewestSerial(context.Background(), noble, mirrorRoots(t, m, noble)); err != nil || mark.Serial != "20261001" {
		t.Errorf("pinning an older build moved the mark: %+v, %v", mark, err)
	}
}

// A codename and its version are one image: one record (warm and offline
// either way), one view, and the result names the canonical version.
func TestCodenameIsOneImage(t *testing.T) {
	t.Parallel()
	m := smallMirror(t, testmirror.DefaultUbuntuSerial)
	e := newEnv(t, m)
	e.deps.ResolutionMaxAge = time.Hour
	emb := e.start(t)
	byNumber := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "number", Spec: noble, Format: catalog.FormatQCOW2})
	checkBuild(t, m, byNumber, testmirror.DefaultUbuntuSerial)

	// The mirror goes away entirely.
	for _, role := range []catalog.Role{catalog.RoleKernel, catalog.RoleInitramfs, catalog.RoleDisk} {
		m.SetFault(m.Path("ubuntu", "24.04", catalog.ArchAMD64, role), testmirror.Fault{Status: 500})
		m.SetFault(m.ManifestPath("ubuntu", "24.04", catalog.ArchAMD64, role), testmirror.Fault{Status: 500})
	}
	m.SetFault(m.VersionDir("ubuntu", "24.04"), testmirror.Fault{Status: 500})
	listings := m.Requests(m.VersionDir("ubuntu", "24.04"))

	codename := catalog.ImageSpec{Distro: "ubuntu", Version: "noble", Arch: catalog.ArchAMD64}
	res := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "codename", Spec: codename, Format: catalog.FormatQCOW2})
	checkBuild(t, m, res, testmirror.DefaultUbuntuSerial)
	if res.ResolvedFrom != messages.ResolvedFromCache || m.Requests(m.VersionDir("ubuntu", "24.04")) != listings {
		t.Errorf("codename: resolved from %s after %d listing requests; want the stored 24.04 record", res.ResolvedFrom, m.Requests(m.VersionDir("ubuntu", "24.04"))-listings)
	}
	if res.Spec != codename || res.View != byNumber.View || res.View != filepath.Join(e.cache, "images", "ubuntu", "24.04", "amd64") {
		t.Errorf("spec %v view %s; want the request's spec and the view %s", res.Spec, res.View, byNumber.View)
	}
	if _, err := os.Stat(filepath.Join(e.cache, "images", "ubuntu", "noble")); !os.IsNotExist(err) {
		t.Errorf("a separate codename view exists: %v", err)
	}
	// The Go client accepts the result as its own (its spec is the request's).
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if _, err := testutil.Prepare(ctx, emb.Conn, messages.PrepareRequest{RequestID: "codename", Spec: codename, Format: catalog.FormatQCOW2}, nil); err != nil {
		t.Errorf("repeat by codename through the client: %v", err)
	}
}

// A deployment against a mirror in the classic layout (only release/)
// prepares its build: labelled with build-info.txt's serial (pinnable,
// recorded, named by the view) when there is one, else unpinned.
func TestClassicLayoutMirror(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		buildInfo bool
		serial    string
	}{
		{"with build-info", true, "20260926"},
		{"unpinned", false, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64), testmirror.WithSerials("20260926"),
				testmirror.WithDiskSize(4<<20, 256<<10), testmirror.WithKernelSize(8<<10, 8<<10), testmirror.WithClassicLayout(tc.buildInfo))
			e := newEnv(t, m)
			emb := e.start(t)
			for i, id := range []string{"first", "again"} {
				res := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: id, Spec: noble, Format: catalog.FormatQCOW2})
				if res.Status != messages.ResultPrepared {
					t.Fatalf("%s: status %s: %+v", id, res.Status, res.Failure)
				}
				if res.Resolved == nil || *res.Resolved != withSerial(noble, tc.serial) || res.Unpinned != (tc.serial == "") {
					t.Fatalf("%s: resolved %v (unpinned %v), want %v", id, res.Resolved, res.Unpinned, withSerial(noble, tc.serial))
				}
				for role, f := range res.Files {
					p := m.Path("ubuntu", "24.04", catalog.ArchAMD64, role)
					if f.Digest != m.Digest(p) || f.URL != m.FileURL(p) {
						t.Errorf("%s: %s = %s from %s; want %s from %s", id, role, f.Digest, f.URL, m.Digest(p), m.FileURL(p))
					}
				}
				b, err := os.ReadFile(filepath.Join(res.View, store.ViewSerialName))
				if tc.serial != "" && string(b) != tc.serial+"\n" || tc.serial == "" && !os.IsNotExist(err) {
					t.Errorf("%s: view serial file = %q, %v; want %q", id, b, err, tc.serial)
				}
				if disk := m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk); i == 1 && m.Requests(disk) != 1 {
					t.Errorf("again: the disk was asked for %d times; want once (the cache answers)", m.Requests(disk))
				}
			}
			if tc.serial == "" {
				return
			}
			pinned := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "pinned", Spec: withSerial(noble, tc.serial), Format: catalog.FormatQCOW2})
			if pinned.Status != messages.ResultPrepared || pinned.ResolvedFrom != messages.ResolvedFromCache {
				t.Fatalf("pinned to the recorded build: %s from %s: %+v", pinned.Status, pinned.ResolvedFrom, pinned.Failure)
			}
		})
	}
}
