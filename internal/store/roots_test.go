package store

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
)

// TestRecordsAreBoundToTrustRoots: a latest resolution, a build's record
// and the newest-serial mark answer only callers under the roots they were
// resolved under; others get ErrOtherRoots naming what differs (or
// ErrNotFound for a mark: a mark of other roots is no history of theirs).
func TestRecordsAreBoundToTrustRoots(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	build := noble
	build.Serial = "20260926"
	r := catalog.Resolution{Spec: build, BootMode: catalog.BootKernel, Roots: &testRoots, ResolvedAt: time.Now().UTC(),
		Assets: []image.Asset{{Role: image.RoleDisk, Name: "d.img", Digest: testutil.SHA256Of(testutil.Fill("a", 10))}}}
	if err := s.SaveResolution(ctx, r); err != nil {
		t.Fatal(err)
	}
	if err := s.SaveSerialResolution(ctx, r); err != nil {
		t.Fatal(err)
	}
	if _, err := s.RaiseNewestSerial(ctx, noble, testRoots, "20991231", time.Now()); err != nil {
		t.Fatal(err)
	}

	// The same roots: answered.
	if _, err := s.LoadResolution(ctx, noble, testRoots); err != nil {
		t.Errorf("LoadResolution under its roots: %v", err)
	}
	if _, err := s.LoadSerialResolution(ctx, build, testRoots); err != nil {
		t.Errorf("LoadSerialResolution under its roots: %v", err)
	}
	if m, err := s.NewestSerial(ctx, noble, testRoots); err != nil || m.Serial != "20991231" {
		t.Errorf("NewestSerial under its roots = %+v, %v", m, err)
	}

	// Other roots: refused, saying what differs.
	for name, load := range map[string]func() error{
		"latest": func() error { _, err := s.LoadResolution(ctx, noble, otherRoots); return err },
		"build":  func() error { _, err := s.LoadSerialResolution(ctx, build, otherRoots); return err },
	} {
		err := load()
		var oe *OtherRootsError
		if !errors.Is(err, ErrOtherRoots) || !errors.As(err, &oe) {
			t.Errorf("%s under other roots = %v, want ErrOtherRoots", name, err)
			continue
		}
		for _, want := range []string{"the cached build of ubuntu 24.04 amd64 (serial 20260926)", "other trust roots", "keyring AAAA1111 (now keyring BBBB2222)", "mirror https://mirror-a.invalid/ (now https://mirror-b.invalid/)"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("%s: %q does not say %q", name, err, want)
			}
		}
	}
	// A mark is per roots: the far-future serial verified under the first
	// roots makes no build of the others a rollback.
	if m, err := s.NewestSerial(ctx, noble, otherRoots); !errors.Is(err, content.ErrNotFound) {
		t.Errorf("NewestSerial under other roots = %+v, %v; want ErrNotFound", m, err)
	}
	if m, err := s.RaiseNewestSerial(ctx, noble, otherRoots, "20260101", time.Now()); err != nil || m.Serial != "20260101" {
		t.Errorf("RaiseNewestSerial under other roots = %+v, %v", m, err)
	}
	if got, err := s.RecordedSerials(ctx, noble, otherRoots); err != nil || len(got) != 0 {
		t.Errorf("RecordedSerials under other roots = %v, %v", got, err)
	}

	// Resolved under the other roots too: each keeps its own build record.
	r2 := r
	r2.Roots = &otherRoots
	if err := s.SaveSerialResolution(ctx, r2); err != nil {
		t.Fatal(err)
	}
	for _, roots := range []catalog.TrustRoots{testRoots, otherRoots} {
		if got, err := s.LoadSerialResolution(ctx, build, roots); err != nil || !got.Roots.Equal(roots) {
			t.Errorf("LoadSerialResolution(%s) = %+v, %v", roots.ID(), got.Roots, err)
		}
	}

	// A record written before records named their roots answers nobody.
	legacy := r
	legacy.Roots = nil
	b := []byte(`{"spec":{"distro":"ubuntu","version":"24.04","arch":"amd64"},"assets":[]}`)
	if err := os.WriteFile(mustRecordPath(t, s, noble), b, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoadResolution(ctx, noble, testRoots); !errors.Is(err, ErrOtherRoots) || !strings.Contains(err.Error(), "unknown") {
		t.Errorf("legacy record = %v, want ErrOtherRoots (unknown roots)", err)
	}
	if err := s.SaveResolution(ctx, legacy); err == nil {
		t.Error("a resolution without roots was recorded")
	}
	if err := s.SaveSerialResolution(ctx, legacy); err == nil {
		t.Error("a build's resolution without roots was recorded")
	}
	// A build record moved into another roots' directory by hand is refused too.
	dir := filepath.Join(s.Root(), "serials", "ubuntu", "24.04", "amd64")
	third := catalog.TrustRoots{Catalog: "sha256:ff", Mirror: "https://c.invalid/"}
	if err := os.MkdirAll(filepath.Join(dir, third.ID()), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(filepath.Join(dir, testRoots.ID(), "20260926.json"), filepath.Join(dir, third.ID(), "20260926.json")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoadSerialResolution(ctx, build, third); !errors.Is(err, ErrOtherRoots) {
		t.Errorf("a build record moved to another roots' directory = %v, want ErrOtherRoots", err)
	}
}
