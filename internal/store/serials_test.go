package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
)

func TestSerialRecords(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	build := func(serial string) catalog.Resolution {
		spec := image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64, Serial: serial}
		return catalog.Resolution{Spec: spec, BootMode: catalog.BootKernel, ResolvedAt: time.Date(2026, 9, 27, 0, 0, 0, 0, time.UTC), Roots: &testRoots,
			Assets: []image.Asset{{Role: image.RoleDisk, Name: "d.img", Digest: testutil.SHA256Of(testutil.Fill(serial, 10))}}}
	}
	for _, serial := range []string{"20260926.2", "20260901", "20260926.10"} {
		if err := s.SaveSerialResolution(ctx, build(serial)); err != nil {
			t.Fatal(err)
		}
	}
	for _, serial := range []string{"20260926.2", "20260901", "20260926.10"} {
		got, err := s.LoadSerialResolution(ctx, build(serial).Spec, testRoots)
		if err != nil || !reflect.DeepEqual(got, build(serial)) {
			t.Errorf("LoadSerialResolution(%s) = %+v, %v", serial, got, err)
		}
	}
	missing := build("20250101").Spec
	if _, err := s.LoadSerialResolution(ctx, missing, testRoots); !errors.Is(err, content.ErrNotFound) {
		t.Errorf("missing build: %v", err)
	}
	// Debris and temporaries are not serials.
	dir := filepath.Join(s.Root(), "serials", "ubuntu", "24.04", "amd64", testRoots.ID())
	for _, junk := range []string{".20260930.json.tmp-1", "notes.txt", "x y.json"} {
		if err := os.WriteFile(filepath.Join(dir, junk), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	got, err := s.RecordedSerials(ctx, noble, testRoots)
	if want := []string{"20260926.10", "20260926.2", "20260901"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("RecordedSerials = %v, %v; want %v", got, err, want)
	}
	if got, err := s.RecordedSerials(ctx, image.Spec{Distro: "ubuntu", Version: "22.04", Arch: "amd64"}, testRoots); err != nil || len(got) != 0 {
		t.Errorf("RecordedSerials of an image never recorded = %v, %v", got, err)
	}
	// A record copied under another serial's name is refused.
	if err := os.Rename(filepath.Join(dir, "20260901.json"), filepath.Join(dir, "20260902.json")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.LoadSerialResolution(ctx, build("20260902").Spec, testRoots); err == nil {
		t.Error("a record holding another build was accepted")
	}
	for _, bad := range []string{"", "../x", "a/b", ".hidden", "x\x00"} {
		spec := build("x").Spec
		spec.Serial = bad
		if err := s.SaveSerialResolution(ctx, catalog.Resolution{Spec: spec, Roots: &testRoots}); !errors.Is(err, content.ErrInvalidName) {
			t.Errorf("SaveSerialResolution(serial %q) = %v, want ErrInvalidName", bad, err)
		}
		if _, err := s.RaiseNewestSerial(ctx, noble, testRoots, bad, time.Now()); !errors.Is(err, content.ErrInvalidName) {
			t.Errorf("RaiseNewestSerial(%q) = %v, want ErrInvalidName", bad, err)
		}
	}
}

func TestNewestSerialOnlyMovesForward(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	if _, err := s.NewestSerial(ctx, noble, testRoots); !errors.Is(err, content.ErrNotFound) {
		t.Fatalf("before any: %v", err)
	}
	day := time.Date(2026, 9, 27, 0, 0, 0, 0, time.UTC)
	steps := []struct{ raise, want string }{
		{"20260926", "20260926"},
		{"20260901", "20260926"}, // older: a rollback never lowers it
		{"20260926.1", "20260926.1"},
		{"20260926.10", "20260926.10"},
		{"20260926.9", "20260926.10"}, // numerically, not as strings
	}
	for i, st := range steps {
		m, err := s.RaiseNewestSerial(ctx, noble, testRoots, st.raise, day.Add(time.Duration(i)*time.Hour))
		if err != nil || m.Serial != st.want {
			t.Fatalf("raise %s: %+v, %v; want %s", st.raise, m, err, st.want)
		}
		if got, err := s.NewestSerial(ctx, noble, testRoots); err != nil || got != m {
			t.Fatalf("NewestSerial = %+v, %v; want %+v", got, err, m)
		}
	}
	// A damaged mark is replaced by the next verified serial.
	p := filepath.Join(s.Root(), "serials", "ubuntu", "24.04", "amd64", testRoots.ID(), "newest")
	if err := os.WriteFile(p, []byte("{garbage"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := s.NewestSerial(ctx, noble, testRoots); err == nil || errors.Is(err, content.ErrNotFound) {
		t.Fatalf("damaged mark: %v", err)
	}
	if m, err := s.RaiseNewestSerial(ctx, noble, testRoots, "20261001", day); err != nil || m.Serial != "20261001" {
		t.Fatalf("raise over a damaged mark: %+v, %v", m, err)
	}
}

// Concurrent raisers, through two Store values on one root as two processes
// would be, end at the greatest serial whatever the interleaving.
func TestNewestSerialConcurrent(t *testing.T) {
	ctx := context.Background()
	a := newStore(t)
	b, err := Open(a.Root(), content.WithLockPoll(time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	for i := range 40 {
		st := a
		if i%2 == 1 {
			st = b
		}
		wg.Go(func() {
			if _, err := st.RaiseNewestSerial(ctx, noble, testRoots, fmt.Sprintf("202609%02d", i%30+1), time.Now()); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	if m, err := a.NewestSerial(ctx, noble, testRoots); err != nil || m.Serial != "20260930" {
		t.Fatalf("after concurrent raises: %+v, %v; want 20260930", m, err)
	}
}
