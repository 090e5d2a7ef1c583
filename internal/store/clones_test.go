package store

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/clone"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// TestCloneResult: Clone finds the cache from the result's disk, picks the
// disk's own format when none is asked, records the use under the request,
// and gc keeps the base while the clone lives.
func TestCloneResult(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	raw := commit(t, s, testutil.Fill("raw disk", 1<<16))
	dir := t.TempDir()
	link, err := s.LinkImage(ctx, image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}, "disk.raw", raw.Path)
	if err != nil {
		t.Fatal(err)
	}
	prepared := func(disk string, f image.DiskFormat) messages.Result {
		return messages.Result{Namespace: "team-a", RequestID: "vm-1", Status: messages.ResultPrepared, Disk: disk, DiskFormat: f}
	}
	for _, tc := range []struct {
		name    string
		res     messages.Result
		opts    clone.Options
		method  clone.Method // "" for either reflink or copy: up to the file system
		format  clone.Format
		wantErr string
	}{
		{name: "raw disk, raw clone", res: prepared(raw.Path, image.FormatRaw), format: clone.FormatRaw},
		{name: "through the images view", res: prepared(link, image.FormatRaw), format: clone.FormatRaw},
		{name: "raw disk, overlay asked", res: prepared(raw.Path, image.FormatRaw), opts: clone.Options{Format: clone.FormatQcow2}, method: clone.MethodOverlay, format: clone.FormatQcow2},
		{name: "disk named only in Files", res: messages.Result{RequestID: "vm-2", Status: messages.ResultPrepared, DiskFormat: image.FormatRaw,
			Files: map[image.Role]messages.File{image.RoleDisk: {Path: raw.Path}}}, format: clone.FormatRaw},
		{name: "failed result", res: messages.Result{RequestID: "vm-3", Status: messages.ResultFailed}, wantErr: "not prepared"},
		{name: "no disk on a host", res: messages.Result{RequestID: "vm-4", Status: messages.ResultPrepared}, wantErr: "names no disk"},
		{name: "disk on another host", res: func() messages.Result {
			r := prepared(filepath.Join(dir, "elsewhere", "derived", "x.raw"), image.FormatRaw)
			r.Host = "mac7"
			return r
		}(), wantErr: "on host mac7, not here"},
		{name: "not a cache file", res: prepared(s.path(dirRecords), image.FormatRaw), wantErr: "not a file of a vmprep cache"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dest := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_"))
			got, err := Clone(ctx, tc.res, dest, tc.opts)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one saying %q", err, tc.wantErr)
				}
				if _, serr := os.Lstat(dest); serr == nil {
					t.Errorf("%s was written although Clone failed", dest)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got.Path != dest || got.Format != tc.format || (tc.method != "" && got.Method != tc.method) ||
				(tc.method == "" && got.Method != clone.MethodReflink && got.Method != clone.MethodCopy) {
				t.Errorf("result %+v, want %s as %s by %q", got, dest, tc.format, tc.method)
			}
			u, ok, err := s.UseOf(KindClone, dest)
			if err != nil || !ok {
				t.Fatalf("no use recorded for %s: %v", dest, err)
			}
			wantReq := messages.RequestKey(tc.res.Namespace, tc.res.RequestID)
			if u.Request != wantReq || u.Method != string(got.Method) || u.Base != "blobs/sha256/"+raw.SHA256.Hex || u.Stale || u.Live != got.Method.Shares() {
				t.Errorf("use %+v: want request %q, method %s, base %s, live %v", u, wantReq, got.Method, raw.SHA256.Hex, got.Method.Shares())
			}
		})
	}

	// A qcow2 disk gets an overlay when no format is asked.
	q := commit(t, s, qcow2Image(t, dir, 1<<20))
	got, err := Clone(ctx, prepared(q.Path, image.FormatQCOW2), filepath.Join(dir, "vm-q.qcow2"), clone.Options{})
	if err != nil || got.Method != clone.MethodOverlay {
		t.Fatalf("clone of a qcow2 disk: %+v, %v; want an overlay", got, err)
	}
	// gc keeps both bases: the overlay names q, the raw clones share raw
	// (or, on a file system that copied, the overlay asked above names it).
	rep, err := s.GC(ctx, content.GCOptions{MinAge: -1})
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range rep.Removed {
		if it.Path == raw.Path || it.Path == q.Path {
			t.Errorf("gc removed %s, which a clone uses", it.Path)
		}
	}
	// An existing clone is kept unless Force.
	if _, err := Clone(ctx, prepared(raw.Path, image.FormatRaw), got.Path, clone.Options{}); !errors.Is(err, clone.ErrExists) {
		t.Errorf("clone over an existing file: %v, want ErrExists", err)
	}
}

// TestUseOf: the one record of a holder, or none; a record whose holder was
// replaced by another file is stale.
func TestUseOf(t *testing.T) {
	ctx := context.Background()
	s := newStore(t)
	b := commit(t, s, testutil.Fill("base", 1<<12))
	dest := filepath.Join(t.TempDir(), "vm.qcow2")
	if _, ok, err := s.UseOf(KindClone, dest); ok || err != nil {
		t.Fatalf("UseOf before any clone: %v, %v", ok, err)
	}
	if _, err := s.CloneDisk(ctx, b.Path, dest, CloneOptions{Options: clone.Options{Format: clone.FormatQcow2}, Request: "r1"}); err != nil {
		t.Fatal(err)
	}
	u, ok, err := s.UseOf(KindClone, dest)
	if err != nil || !ok || !u.Live || u.Request != "r1" || u.Method != "overlay" {
		t.Fatalf("UseOf = %+v, %v, %v; want a live overlay of request r1", u, ok, err)
	}
	if _, _, err := s.UseOf("../x", dest); err == nil {
		t.Error("UseOf accepted a kind with a path in it")
	}
	if err := os.Remove(dest); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dest, []byte("another file"), 0o644); err != nil {
		t.Fatal(err)
	}
	if u, ok, err := s.UseOf(KindClone, dest); err != nil || !ok || u.Live || !u.Stale {
		t.Errorf("UseOf after the clone was replaced = %+v, %v, %v; want a stale record", u, ok, err)
	}
}

// qcow2Image returns the bytes of a small, empty qcow2 image made by qemu-img.
func qcow2Image(t *testing.T, dir string, size int64) []byte {
	t.Helper()
	p := filepath.Join(dir, "src.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", p, strconv.FormatInt(size, 10)).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
