package store

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/testutil"
)

// TestHostileStoreContents fills every directory with debris a crash, a
// careless user or an attacker with write access could leave, and checks
// that List, Verify and GC neither fail nor follow anything out of the root.
func TestHostileStoreContents(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	good := commit(t, s, testutil.Fill("good", 1000))
	outside := filepath.Join(t.TempDir(), "precious")
	if err := os.WriteFile(outside, []byte("do not touch"), 0o644); err != nil {
		t.Fatal(err)
	}
	hex := strings.Repeat("ab", 32)
	r := s.Root()
	write := func(rel string, b []byte) {
		p := filepath.Join(r, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, rel string) {
		p := filepath.Join(r, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
	}
	write("blobs/sha256/not-hex", []byte("x"))
	write("blobs/sha256/"+strings.Repeat("cd", 32)+"/inner", []byte("a directory named like a blob"))
	link(outside, "blobs/sha256/"+strings.Repeat("ef", 32))
	write("derived/sha256-"+hex+"_c_raw/inner", []byte("a directory named like a derived file"))
	write("derived/garbage", []byte("x"))
	write("index/sha512/"+strings.Repeat("0", 128), bytes.Repeat([]byte("z"), 1<<20))
	write("index/sha512/short", []byte(good.SHA256.Hex))
	write("stamps/blobs/"+good.SHA256.Hex+"x", []byte("{"))
	write("records/ubuntu/24.04/amd64.json", bytes.Repeat([]byte("["), maxRecordBytes+10))
	write("records/debian/13/arm64.json", []byte(`{"spec":{"distro":"debian"},"assets":[{"digest":"sha256:`+hex+`"}]}`))
	link(outside, "images/evil/1/amd64/disk.img")
	link("../../../../../"+filepath.Base(filepath.Dir(outside))+"/precious", "images/evil/1/amd64/rel.img")
	link("loop-b", "images/evil/1/amd64/loop-a")
	link("loop-a", "images/evil/1/amd64/loop-b")
	link(outside, "images/evil/2")
	entries, err := s.List(ctx)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	if len(entries) != 1 || entries[0].Path != good.Path {
		t.Errorf("List = %+v, want only the good blob", entries)
	}
	if err := s.Verify(ctx, nil); err != nil {
		t.Errorf("Verify: %v", err)
	}
	if _, err := s.GC(ctx, content.GCOptions{MinAge: -1, PartialMaxAge: time.Nanosecond}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if b, err := os.ReadFile(outside); err != nil || string(b) != "do not touch" {
		t.Fatalf("file outside the store damaged: %q %v", b, err)
	}
	for _, rel := range []string{"blobs/sha256/not-hex", "blobs/sha256/" + strings.Repeat("ef", 32), "derived/garbage", "images/evil/1/amd64/disk.img", "images/evil/1/amd64/loop-a", "index/sha512/short"} {
		if testutil.Exists(filepath.Join(r, rel)) {
			t.Errorf("GC left %s", rel)
		}
	}
	// The good blob is unreferenced but the hostile record naming another
	// digest must not have kept or removed anything else by mistake.
	if _, err := s.Lookup(ctx, good.SHA256); err == nil {
		t.Error("unreferenced good blob survived GC with MinAge<0")
	}
}
