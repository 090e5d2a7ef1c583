package pipeline_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/qcow2"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/clone"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// TestTargetedClones: a request targeted at a converter host asks it for
// clones of the disk, named by the backend and made in the directory the
// host configured. The converter writes nothing outside that directory and
// replaces no file but a clone it recorded, and then only with force; the
// host's cache keeps the base while the clones use it.
func TestTargetedClones(t *testing.T) {
	m := testmirror.New(t, testmirror.WithArches(image.ArchAMD64))
	f := newFleet(t, m)
	f.host("gateway", []string{messages.StageResolver, messages.StageCollector}, nil)
	f.host("fetch", []string{messages.StageFetcher}, nil)
	f.host("check", []string{messages.StageVerifier}, nil)
	cloneDir := t.TempDir()
	mac1 := f.host("mac1", []string{messages.StageConverter}, func(d *pipeline.Deps) { d.TargetedOnly, d.CloneDir = true, cloneDir })
	f.host("mac2", []string{messages.StageConverter}, func(d *pipeline.Deps) { d.TargetedOnly = true })
	nc := f.conn()
	spec := image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}

	// Files a request must not touch: one outside the clone directory that
	// a symlink inside it points at, and a file someone else put there.
	outside := filepath.Join(t.TempDir(), "precious")
	writeFile(t, outside, "outside the clone directory")
	if err := os.Symlink(outside, filepath.Join(cloneDir, "escape.raw")); err != nil {
		t.Fatal(err)
	}
	writeFile(t, filepath.Join(cloneDir, "foreign.img"), "someone else's disk")

	res := prepare(t, nc, messages.PrepareRequest{RequestID: "clones-1", Spec: spec, Format: image.FormatRaw, Target: "mac1",
		Clones: []messages.CloneRequest{{Name: "vm1.raw"}, {Name: "vm2.qcow2", Format: image.FormatQCOW2, Size: 64 << 20}}})
	if res.Status != messages.ResultPrepared {
		t.Fatalf("%+v", res.Failure)
	}
	if res.Host != "mac1" || len(res.Clones) != 2 {
		t.Fatalf("result on %q with clones %+v: want two clones on mac1", res.Host, res.Clones)
	}
	diskSum := fileSHA256(t, res.Disk)
	vm1, vm2 := res.Clones[0], res.Clones[1]
	if vm1.Path != filepath.Join(cloneDir, "vm1.raw") || vm1.Format != image.FormatRaw ||
		(vm1.Method != string(clone.MethodReflink) && vm1.Method != string(clone.MethodCopy)) {
		t.Errorf("raw clone %+v", vm1)
	}
	if vm2.Path != filepath.Join(cloneDir, "vm2.qcow2") || vm2.Format != image.FormatQCOW2 || vm2.Method != string(clone.MethodOverlay) {
		t.Errorf("overlay %+v", vm2)
	}
	if fileSHA256(t, vm1.Path) != diskSum {
		t.Errorf("clone %s differs from the disk %s", vm1.Path, res.Disk)
	}
	if backing := overlayBacking(t, vm2.Path); !sameFile(backing, res.Disk) {
		t.Errorf("overlay %s is backed by %s, want the disk %s", vm2.Path, backing, res.Disk)
	}
	// The guest writes to its clone; the base stays as verified.
	wf, err := os.OpenFile(vm1.Path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := wf.WriteAt([]byte("guest data"), 4096); err != nil {
		t.Fatal(err)
	}
	wf.Close()
	if fileSHA256(t, res.Disk) != diskSum {
		t.Fatal("writing to a clone changed its base")
	}
	for _, c := range res.Clones {
		use, ok, err := mac1.UseOf(store.KindClone, c.Path)
		if err != nil || !ok || use.Request != "clones-1" || use.Method != c.Method {
			t.Errorf("use record of %s: %+v, %v, %v", c.Path, use, ok, err)
		}
	}
	// gc on the host keeps the base: the overlay names it (and a reflink shares it).
	rep, err := mac1.GC(context.Background(), content.GCOptions{MinAge: -1})
	if err != nil {
		t.Fatal(err)
	}
	for _, it := range rep.Removed {
		if sameFile(it.Path, res.Disk) {
			t.Errorf("gc removed the disk %s, which the clones use", it.Path)
		}
	}
	if _, err := os.Stat(res.Disk); err != nil {
		t.Fatalf("the base is gone after gc: %v", err)
	}

	before, err := os.Stat(vm1.Path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name    string
		target  string
		clone   messages.CloneRequest
		wantErr string // "" for a prepared result
	}{
		{"host without a clone directory", "mac2", messages.CloneRequest{Name: "vm9.raw"}, "no clone directory"},
		{"an existing clone without force", "mac1", messages.CloneRequest{Name: "vm1.raw"}, "exists"},
		{"someone else's file, with force", "mac1", messages.CloneRequest{Name: "foreign.img", Force: true}, "not a clone this host recorded"},
		{"a symlink out of the directory, with force", "mac1", messages.CloneRequest{Name: "escape.raw", Force: true}, "not a clone"},
		{"a symlink out of the directory", "mac1", messages.CloneRequest{Name: "escape.raw"}, "exists"},
		{"an existing clone, with force", "mac1", messages.CloneRequest{Name: "vm1.raw", Force: true}, ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			id := "clones-" + strings.NewReplacer(" ", "-", ",", "", "'", "").Replace(tc.name)
			res := prepare(t, nc, messages.PrepareRequest{RequestID: id, Spec: spec, Format: image.FormatRaw, Target: tc.target,
				Clones: []messages.CloneRequest{tc.clone}})
			if tc.wantErr == "" {
				if res.Status != messages.ResultPrepared || len(res.Clones) != 1 || res.Clones[0].Path != filepath.Join(cloneDir, tc.clone.Name) {
					t.Fatalf("%+v %+v", res.Clones, res.Failure)
				}
				return
			}
			if res.Status != messages.ResultFailed || res.Failure.Stage != messages.StageConverter || !strings.Contains(res.Failure.Cause, tc.wantErr) {
				t.Fatalf("status %s, failure %+v: want the converter saying %q", res.Status, res.Failure, tc.wantErr)
			}
		})
	}
	if after, err := os.Stat(vm1.Path); err != nil || os.SameFile(before, after) || fileSHA256(t, vm1.Path) != diskSum {
		t.Errorf("vm1.raw after a forced clone: %v; want a new file with the disk's content", err)
	}
	if b, _ := os.ReadFile(outside); string(b) != "outside the clone directory" {
		t.Errorf("the file a symlink in the clone directory points at was written: %.60q", b)
	}
	if b, _ := os.ReadFile(filepath.Join(cloneDir, "foreign.img")); string(b) != "someone else's disk" {
		t.Errorf("someone else's file was overwritten: %.60q", b)
	}

	// A request that names a path is refused before any work, even when
	// published without the Go client's checks.
	for i, name := range []string{"../vm.raw", "/tmp/vm.raw", "sub/vm.raw", "..", ".hidden"} {
		res := prepareUnchecked(t, nc, messages.PrepareRequest{RequestID: "clones-hostile-" + string(rune('a'+i)), Spec: spec, Format: image.FormatRaw,
			Target: "mac1", Clones: []messages.CloneRequest{{Name: name}}})
		if res.Status != messages.ResultFailed || res.Failure.Stage != messages.StageResolver || !strings.Contains(res.Failure.Cause, "clone name") {
			t.Errorf("clone %q: status %s, %+v; want the resolver refusing the name", name, res.Status, res.Failure)
		}
	}
	entries, err := os.ReadDir(cloneDir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"escape.raw", "foreign.img", "vm1.raw", "vm2.qcow2"}; !slices.Equal(names, want) {
		t.Errorf("clone directory holds %v, want %v", names, want)
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func overlayBacking(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	name, _, ok, err := qcow2.Backing(f)
	if err != nil || !ok {
		t.Fatalf("%s has no backing file: %v", path, err)
	}
	return name
}

func sameFile(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

// TestClonesNeedATargetHostsConverter: a deployment that keeps every file
// in one cache directory has no converter on a target host, so its
// resolver refuses clones, even for its own host, before any work.
func TestClonesNeedATargetHostsConverter(t *testing.T) {
	e := newEnv(t, testmirror.New(t, testmirror.WithArches(image.ArchAMD64)))
	e.deps.Host = "solo"
	emb := e.start(t)
	res := prepare(t, emb.Conn, messages.PrepareRequest{RequestID: "clones-solo", Spec: image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64},
		Format: image.FormatRaw, Target: "solo", Clones: []messages.CloneRequest{{Name: "vm1.raw"}}})
	if res.Status != messages.ResultFailed || res.Failure.Stage != messages.StageResolver || !strings.Contains(res.Failure.Cause, "use vmprep clone there") {
		t.Fatalf("status %s, %+v: want the resolver refusing clones", res.Status, res.Failure)
	}
}
