package store

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/qcow2"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/clone"
)

func TestGCKeepsBasesThatClonesUse(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	dir := t.TempDir()
	b1 := commit(t, s, testutil.Fill("overlay base", 1<<16))
	b2 := commit(t, s, testutil.Fill("reflink base", 1<<16))
	b3 := commit(t, s, testutil.Fill("copied base", 1<<16))
	b4 := commit(t, s, testutil.Fill("replaced holder's base", 1<<16))
	rel := func(p string) string {
		r, err := s.StoredFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	record := func(base, dest string, u Use, opts clone.Options) {
		t.Helper()
		u.Kind, u.Base, u.Holder = "clone", rel(base), dest
		err := s.RecordUse(ctx, u, func(*Use) error {
			_, err := clone.Clone(ctx, base, dest, opts)
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	ov := filepath.Join(dir, "vm1.qcow2")
	record(b1.Path, ov, Use{Method: "overlay", Pins: true, Backing: true}, clone.Options{Format: clone.FormatQcow2})
	// Whether blocks are shared depends on the file system, not on the
	// record: a reflink's record pins its base as long as the clone lives.
	rl := filepath.Join(dir, "vm2.raw")
	record(b2.Path, rl, Use{Method: "reflink", Pins: true}, clone.Options{})
	cp := filepath.Join(dir, "vm3.raw")
	record(b3.Path, cp, Use{Method: "copy"}, clone.Options{})
	re := filepath.Join(dir, "vm4.raw")
	record(b4.Path, re, Use{Method: "reflink", Pins: true}, clone.Options{})
	// A different file at the clone's path no longer shares anything.
	if err := os.WriteFile(re+".new", []byte("someone else's"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(re+".new", re); err != nil {
		t.Fatal(err)
	}

	gc := func() map[string]string {
		t.Helper()
		rep, err := s.GC(ctx, content.GCOptions{MinAge: -1})
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for _, it := range rep.Removed {
			got[it.Path] = it.Kind + ": " + it.Reason
		}
		return got
	}
	removed := gc()
	for _, b := range []content.BlobInfo{b1, b2} {
		if _, ok := removed[b.Path]; ok || !testutil.Exists(b.Path) {
			t.Errorf("gc removed %s, which a live clone uses", b.Path)
		}
	}
	for _, b := range []content.BlobInfo{b3, b4} {
		if !strings.HasPrefix(removed[b.Path], "blob") || testutil.Exists(b.Path) {
			t.Errorf("gc kept %s (removed: %v), which no clone shares", b.Path, removed)
		}
	}
	entries, err := s.List(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var listed int
	for _, e := range entries {
		if e.Path == b1.Path && len(e.Uses) == 1 && e.Uses[0].Holder == ov && e.Uses[0].Method == "overlay" {
			listed++
		}
		if e.Path == b2.Path && len(e.Uses) == 1 && e.Uses[0].Holder == rl {
			listed++
		}
	}
	if listed != 2 {
		t.Errorf("List does not show the clones of both bases: %+v", entries)
	}
	uses, err := s.Uses(ctx)
	if err != nil {
		t.Fatal(err)
	}
	live := map[string]bool{}
	for _, u := range uses {
		live[u.Holder] = u.Live
	}
	if len(uses) != 3 || !live[ov] || !live[rl] || live[cp] {
		t.Fatalf("after gc, uses = %+v; want the two live ones and the copy's (the replaced holder's record dropped)", uses)
	}

	// The overlay rebased in place onto another file (same inode) no longer
	// needs b1; the reflink clone removed no longer keeps b2.
	f, err := os.OpenFile(ov, os.O_WRONLY|os.O_TRUNC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := qcow2.WriteOverlay(f, qcow2.OverlaySpec{Backing: rl, BackingFormat: qcow2.FormatRaw, VirtualSize: 1 << 16}); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if err := os.Remove(rl); err != nil {
		t.Fatal(err)
	}
	removed = gc()
	for _, b := range []content.BlobInfo{b1, b2} {
		if testutil.Exists(b.Path) {
			t.Errorf("gc kept %s after its clone went: removed %v", b.Path, removed)
		}
	}
	if uses, _ := s.Uses(ctx); len(uses) != 0 {
		t.Errorf("stale use records left (the copy's base is gone too): %+v", uses)
	}
}

func TestRecordUseRefusesFilesOutsideTheStore(t *testing.T) {
	s := newStore(t)
	outside := filepath.Join(t.TempDir(), "disk.raw")
	if err := os.WriteFile(outside, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{outside, s.path(dirRecords), filepath.Join(s.Root(), "blobs", "sha256", "..", "..", "..", "x")} {
		if _, err := s.StoredFile(p); err == nil {
			t.Errorf("StoredFile(%s) accepted a file outside blobs/ and derived/", p)
		}
	}
	err := s.RecordUse(context.Background(), Use{Kind: "clone", Base: "../../etc/passwd", Holder: outside}, nil)
	if err == nil {
		t.Fatal("RecordUse accepted a base outside the store")
	}
}

// On XFS with reflink, a clone shares its base's blocks: gc keeps the base
// while the clone lives, and removes it once the clone is gone.
func TestGCKeepsReflinkedBase(t *testing.T) {
	ctx := context.Background()
	mnt := testutil.MountLoopFS(t, "xfs")
	s, err := Open(filepath.Join(mnt, "cache"))
	if err != nil {
		t.Fatal(err)
	}
	b := commit(t, s, testutil.Fill("reflinked base", 4<<20))
	dest := filepath.Join(mnt, "vm.raw")
	rel, err := s.StoredFile(b.Path)
	if err != nil {
		t.Fatal(err)
	}
	var method clone.Method
	err = s.RecordUse(ctx, Use{Kind: "clone", Base: rel, Holder: dest}, func(u *Use) error {
		res, err := clone.Clone(ctx, b.Path, dest, clone.Options{RequireCOW: true})
		method, u.Method, u.Pins = res.Method, string(res.Method), res.Method.Shares()
		return err
	})
	if err != nil || method != clone.MethodReflink {
		t.Fatalf("clone on XFS: %s, %v", method, err)
	}
	if _, err := s.GC(ctx, content.GCOptions{MinAge: -1}); err != nil {
		t.Fatal(err)
	}
	if !testutil.Exists(b.Path) {
		t.Fatal("gc removed a base a reflink clone shares")
	}
	if err := os.Remove(dest); err != nil {
		t.Fatal(err)
	}
	if _, err := s.GC(ctx, content.GCOptions{MinAge: -1}); err != nil {
		t.Fatal(err)
	}
	if testutil.Exists(b.Path) {
		t.Fatal("gc kept the base after its only clone was removed")
	}
}
