package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"sort"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
)

// gcFixture is a store with one of each kind of thing GC must keep or remove.
type gcFixture struct {
	s                                       *Store
	recorded, linked, orphan                content.BlobInfo
	derivedOfRecorded, derivedOfOrphan      string
	derivedOldConverter                     string
	stalePartial, freshPartial, heldPartial string
	staleTemp, freshTemp, danglingLink      string
	// a killed producer's temporary: removed at once while no writer runs
	freshDerivedTemp string
	releaseHeld      func() error
}

func newGCFixture(t *testing.T) *gcFixture {
	t.Helper()
	ctx := context.Background()
	f := &gcFixture{s: newStore(t)}
	s := f.s
	recData := testutil.Fill("recorded", 1000)
	f.recorded = commitAs(t, s, recData, testutil.SHA512Of(recData)) // referenced through the SHA-512 alias
	f.linked = commit(t, s, testutil.Fill("linked", 2000))
	f.orphan = commit(t, s, testutil.Fill("orphan", 3000))

	if err := s.SaveResolution(ctx, catalog.Resolution{
		Spec:   noble,
		Roots:  &testRoots,
		Assets: []image.Asset{{Role: image.RoleDisk, Digest: testutil.SHA512Of(recData)}},
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LinkImage(t.Context(), image.Spec{Distro: "debian", Version: "13", Arch: "arm64"}, LinkKernel, f.linked.Path); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int64
	var err error
	f.derivedOfRecorded, err = s.PutDerived(ctx, content.DerivedKey{Source: f.recorded.SHA256, Converter: "c-1", Format: "raw"}, writeProducer(testutil.Fill("d1", 500), &calls))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.LinkImage(t.Context(), noble, LinkDiskRaw, f.derivedOfRecorded); err != nil {
		t.Fatal(err)
	}
	// Output of an older converter for a recorded source: no longer linked.
	f.derivedOldConverter, err = s.PutDerived(ctx, content.DerivedKey{Source: f.recorded.SHA256, Converter: "c-0", Format: "raw"}, writeProducer(testutil.Fill("d0", 400), &calls))
	if err != nil {
		t.Fatal(err)
	}
	f.derivedOfOrphan, err = s.PutDerived(ctx, content.DerivedKey{Source: f.orphan.SHA256, Converter: "c-1", Format: "raw"}, writeProducer(testutil.Fill("d2", 600), &calls))
	if err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-48 * time.Hour)
	mk := func(p string, aged bool) string {
		if err := os.WriteFile(p, []byte("partial"), 0o644); err != nil {
			t.Fatal(err)
		}
		if aged {
			if err := os.Chtimes(p, old, old); err != nil {
				t.Fatal(err)
			}
		}
		return p
	}
	stale := testutil.SHA256Of([]byte("stale download"))
	f.stalePartial = mk(s.IngestPath(stale), true)
	mk(s.IngestPath(stale)+".meta", true)
	f.freshPartial = mk(s.IngestPath(testutil.SHA256Of([]byte("fresh download"))), false)
	held := testutil.SHA512Of([]byte("held download"))
	f.heldPartial = mk(s.IngestPath(held), true)
	f.releaseHeld = holdLock(t, s.Root(), held.String())
	f.staleTemp = mk(filepath.Join(s.Root(), content.DirBlobs, "sha256", ".x"+atomicfile.TempMarker+"1"), true)
	f.freshTemp = mk(filepath.Join(s.Root(), dirRecords, ".y.json"+atomicfile.TempMarker+"2"), false)
	f.freshDerivedTemp = mk(filepath.Join(s.Root(), content.DirDerived, ".z"+atomicfile.TempMarker+"3"), false)
	dir, _ := s.ImageDir(noble)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	f.danglingLink = filepath.Join(dir, LinkInitramfs)
	if err := os.Symlink("../../../../blobs/sha256/"+testutil.SHA256Of([]byte("gone")).Hex, f.danglingLink); err != nil {
		t.Fatal(err)
	}
	return f
}

func TestGC(t *testing.T) {
	ctx := context.Background()
	f := newGCFixture(t)
	s := f.s

	// Right after commit, the grace period keeps unreferenced files.
	rep, err := s.GC(ctx, content.GCOptions{DryRun: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range rep.Removed {
		if it.Kind == "blob" || it.Kind == "derived" {
			t.Errorf("within MinAge, GC would remove %s", it.Path)
		}
	}

	wantRemoved := []string{f.orphan.Path, f.derivedOfOrphan, f.derivedOldConverter, f.stalePartial, f.stalePartial + ".meta", f.staleTemp, f.danglingLink, f.freshDerivedTemp}
	wantKept := []string{f.recorded.Path, f.linked.Path, f.derivedOfRecorded, f.freshPartial, f.heldPartial, f.freshTemp}
	sort.Strings(wantRemoved)

	for _, dry := range []bool{true, false} {
		rep, err := s.GC(ctx, content.GCOptions{DryRun: dry, MinAge: -1})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		var freed int64
		for _, it := range rep.Removed {
			if it.Kind == "stamp" || it.Kind == "alias" {
				continue // bookkeeping of removed blobs, checked below
			}
			got = append(got, it.Path)
			freed += it.Size
		}
		sort.Strings(got)
		if !equalStrings(got, wantRemoved) {
			t.Errorf("dry=%v removed\n %v\nwant\n %v", dry, got, wantRemoved)
		}
		if freed < f.orphan.Size+600 || rep.Freed < freed {
			t.Errorf("dry=%v freed %d (report %d)", dry, freed, rep.Freed)
		}
		if len(rep.Busy) != 1 || rep.Busy[0] != f.heldPartial {
			t.Errorf("dry=%v busy = %v, want the held partial", dry, rep.Busy)
		}
		for _, p := range wantRemoved {
			if testutil.Exists(p) == !dry {
				t.Errorf("dry=%v: %s exists=%v", dry, p, testutil.Exists(p))
			}
		}
		for _, p := range wantKept {
			if !testutil.Exists(p) {
				t.Errorf("dry=%v: kept file %s is gone", dry, p)
			}
		}
	}
	if testutil.Exists(filepath.Join(s.Root(), "stamps", "blobs", f.orphan.SHA256.Hex)) {
		t.Error("stamp of removed blob left")
	}
	// Kept things still work.
	if _, err := s.Lookup(ctx, testutil.SHA512Of(testutil.Fill("recorded", 1000))); err != nil {
		t.Errorf("recorded blob after GC: %v", err)
	}
	if _, err := s.Lookup(ctx, f.orphan.SHA256); !errors.Is(err, content.ErrNotFound) {
		t.Errorf("orphan after GC: %v", err)
	}
	// Once the download lock is released, the stale partial goes too.
	if err := f.releaseHeld(); err != nil {
		t.Fatal(err)
	}
	rep, err = s.GC(ctx, content.GCOptions{MinAge: -1})
	if err != nil {
		t.Fatal(err)
	}
	if testutil.Exists(f.heldPartial) || len(rep.Busy) != 0 {
		t.Errorf("released partial: exists=%v busy=%v", testutil.Exists(f.heldPartial), rep.Busy)
	}
}

func TestGCWaitsForWriters(t *testing.T) {
	s := newStore(t)
	unlock, err := s.PublishLock(context.Background()) // as Commit/PutDerived hold it
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.GC(ctx, content.GCOptions{}); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("GC during a write = %v, want it to wait until ctx expires", err)
	}
	// A producer's fresh temporary is not garbage while a writer runs.
	tmp := filepath.Join(s.Root(), content.DirDerived, ".out"+atomicfile.TempMarker+"1")
	if err := os.WriteFile(tmp, []byte("being written"), 0o644); err != nil {
		t.Fatal(err)
	}
	if rep, err := s.GC(context.Background(), content.GCOptions{DryRun: true}); err != nil || len(rep.Removed) != 0 {
		t.Errorf("dry-run GC during a write = %+v, %v: want nothing removed", rep, err)
	}
	unlock()
	if rep, err := s.GC(context.Background(), content.GCOptions{DryRun: true}); err != nil || len(rep.Removed) != 1 {
		t.Errorf("dry-run GC after the write = %+v, %v: want the temporary reported", rep, err)
	}
	if _, err := s.GC(context.Background(), content.GCOptions{}); err != nil {
		t.Error(err)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func TestList(t *testing.T) {
	ctx := context.Background()
	f := newGCFixture(t)
	entries, err := f.s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	byPath := map[string]content.Entry{}
	for _, e := range entries {
		byPath[e.Path] = e
	}
	if len(entries) != 6 {
		t.Errorf("List has %d entries, want 3 blobs + 3 derived", len(entries))
	}
	rec := byPath[f.recorded.Path]
	if rec.Kind != content.KindBlob || rec.Size != 1000 || len(rec.Records) != 1 || rec.Records[0] != noble ||
		len(rec.Aliases) != 1 || rec.Aliases[0] != testutil.SHA512Of(testutil.Fill("recorded", 1000)) || rec.CommittedAt.IsZero() {
		t.Errorf("recorded entry %+v", rec)
	}
	if l := byPath[f.linked.Path]; len(l.Images) != 1 || l.Images[0] != "debian/13/arm64/vmlinuz" {
		t.Errorf("linked entry %+v", l)
	}
	for _, p := range []string{f.orphan.Path, f.derivedOldConverter} {
		if o := byPath[p]; o.Referenced() {
			t.Errorf("unused entry %+v", o)
		}
	}
	d := byPath[f.derivedOfRecorded]
	if d.Kind != content.KindDerived || d.Derived == nil || d.Derived.Source != f.recorded.SHA256 || len(d.Images) != 1 || d.Images[0] != "ubuntu/24.04/amd64/disk.raw" || d.SparseSHA256 != sparseDigest(t, f.s, d.Path) || !d.Digest.IsZero() {
		t.Errorf("derived entry %+v", d)
	}
	if entries[0].Kind != content.KindBlob || entries[len(entries)-1].Kind != content.KindDerived {
		t.Error("blobs are not listed before derived files")
	}
}

// TestGCReportsFailures: what GC cannot remove is reported, not just logged.
func TestGCReportsFailures(t *testing.T) {
	s := newStore(t)
	debris := filepath.Join(s.Root(), content.DirDerived, ".x"+atomicfile.TempMarker+"1")
	if err := os.MkdirAll(filepath.Join(debris, "inner"), 0o755); err != nil {
		t.Fatal(err)
	}
	rep, err := s.GC(context.Background(), content.GCOptions{PartialMaxAge: time.Nanosecond})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Failed) != 1 || rep.Failed[0].Path != debris || len(rep.Removed) != 0 {
		t.Fatalf("GC report %+v: want exactly %s failed", rep, debris)
	}
}
