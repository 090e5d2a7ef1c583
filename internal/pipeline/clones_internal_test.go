package pipeline

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// TestCollectorAdmitsOnlyTheClonesAsked: clones in a done event must be the
// ones the request asked for, reported by the target host's converter.
func TestCollectorAdmitsOnlyTheClonesAsked(t *testing.T) {
	objects := testObjectMedium(t)
	asked := []messages.CloneRequest{{Name: "vm1.raw"}, {Name: "vm2.qcow2", Format: image.FormatQCOW2}}
	made := func() []messages.Clone {
		return []messages.Clone{
			{Name: "vm1.raw", Path: "/srv/vms/vm1.raw", Method: "reflink", Format: image.FormatRaw},
			{Name: "vm2.qcow2", Path: "/srv/vms/vm2.qcow2", Method: "overlay", Format: image.FormatQCOW2},
		}
	}
	for _, tc := range []struct {
		name    string
		subject string
		role    image.Role
		edit    func(ev *messages.AssetEvent)
		refused string // "" = admitted
	}{
		{name: "the clones asked, from the target host", subject: messages.DoneSubjectOf("mac1"), role: image.RoleDisk},
		{name: "none", subject: messages.DoneSubjectOf("mac1"), role: image.RoleDisk, refused: "asked for 2",
			edit: func(ev *messages.AssetEvent) { ev.Cloned = nil }},
		{name: "one missing", subject: messages.DoneSubjectOf("mac1"), role: image.RoleDisk, refused: "asked for 2",
			edit: func(ev *messages.AssetEvent) { ev.Cloned = ev.Cloned[:1] }},
		{name: "another name", subject: messages.DoneSubjectOf("mac1"), role: image.RoleDisk, refused: "asked for",
			edit: func(ev *messages.AssetEvent) { ev.Cloned[0].Name, ev.Cloned[0].Path = "vm9.raw", "/srv/vms/vm9.raw" }},
		{name: "a path of another name", subject: messages.DoneSubjectOf("mac1"), role: image.RoleDisk, refused: "asked for",
			edit: func(ev *messages.AssetEvent) { ev.Cloned[0].Path = "/etc/passwd" }},
		{name: "a relative path", subject: messages.DoneSubjectOf("mac1"), role: image.RoleDisk, refused: "asked for",
			edit: func(ev *messages.AssetEvent) { ev.Cloned[0].Path = "vm1.raw" }},
		{name: "an unknown method", subject: messages.DoneSubjectOf("mac1"), role: image.RoleDisk, refused: "not a clone method",
			edit: func(ev *messages.AssetEvent) { ev.Cloned[0].Method = "magic" }},
		{name: "a raw overlay", subject: messages.DoneSubjectOf("mac1"), role: image.RoleDisk, refused: "asked for raw",
			edit: func(ev *messages.AssetEvent) { ev.Cloned[0].Method = "overlay" }},
		{name: "the wrong format", subject: messages.DoneSubjectOf("mac1"), role: image.RoleDisk, refused: "asked for qcow2",
			edit: func(ev *messages.AssetEvent) { ev.Cloned[1].Format = image.FormatRaw }},
		{name: "clones of a kernel", subject: messages.DoneSubjectOf("mac1"), role: image.RoleKernel, refused: "only a disk",
			edit: func(ev *messages.AssetEvent) { ev.Cloned = made() }},
		{name: "other clones than the request's", subject: messages.DoneSubjectOf("mac1"), role: image.RoleDisk, refused: "clones differ",
			edit: func(ev *messages.AssetEvent) { ev.Clones = ev.Clones[:1] }},
		{name: "from another host", subject: messages.DoneSubjectOf("mac2"), role: image.RoleDisk, refused: "mac1",
			edit: func(ev *messages.AssetEvent) { ev.Host = "mac2" }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, evs := admitFixture(image.FormatRaw, "mac1", false)
			st.Clones = asked
			ev := evs[tc.role]
			ev.Clones, ev.Host, ev.Path = asked, "mac1", "/var/cache/vmprep/derived/x"
			if tc.role == image.RoleDisk {
				ev.Status, ev.FileFormat, ev.Cloned = messages.StatusConverted, image.FormatRaw, made()
			}
			if tc.edit != nil {
				tc.edit(&ev)
			}
			c := &CollectorStage{Medium: objects, Logger: slog.New(slog.DiscardHandler)}
			_, err := c.admit(tc.subject, &st, ev)
			if tc.refused == "" {
				if err != nil {
					t.Fatalf("refused what the converter sends: %v", err)
				}
				return
			}
			if err == nil || !errors.Is(err, errRefused) || !strings.Contains(err.Error(), tc.refused) {
				t.Errorf("admit = %v, want a refusal saying %q", err, tc.refused)
			}
		})
	}
}

// TestConverterClonesOnce: a redelivered disk event finds the clones its
// request made and reports them, without making them again; another
// request naming the same file is refused (and replaces it only with force).
func TestConverterClonesOnce(t *testing.T) {
	ctx := context.Background()
	st, blob := storeWithDisk(ctx, t)
	dir := t.TempDir()
	c := &ConverterStage{Store: st, Host: "mac1", CloneDir: dir, Logger: slog.New(slog.DiscardHandler)}
	event := func(id string, clones ...messages.CloneRequest) messages.AssetEvent {
		return messages.AssetEvent{RequestID: id, Spec: image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64},
			Format: image.FormatRaw, Target: "mac1", Clones: clones}
	}
	noProgress := func(messages.Progress) {}
	first, err := c.makeClones(ctx, event("r1", messages.CloneRequest{Name: "vm1.qcow2", Format: image.FormatQCOW2}), blob.Path, noProgress)
	if err != nil || len(first) != 1 || first[0].Method != "overlay" {
		t.Fatalf("makeClones = %+v, %v", first, err)
	}
	before, err := os.Stat(first[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	again, err := c.makeClones(ctx, event("r1", messages.CloneRequest{Name: "vm1.qcow2", Format: image.FormatQCOW2}), blob.Path, noProgress)
	if err != nil || len(again) != 1 || again[0] != first[0] {
		t.Fatalf("redelivered: %+v, %v; want %+v again", again, err, first[0])
	}
	if after, err := os.Stat(first[0].Path); err != nil || !os.SameFile(before, after) {
		t.Errorf("the redelivered event made its clone again")
	}
	_, err = c.makeClones(ctx, event("r2", messages.CloneRequest{Name: "vm1.qcow2", Format: image.FormatQCOW2}), blob.Path, noProgress)
	if !stage.IsPermanent(err) || !strings.Contains(err.Error(), "exists") {
		t.Errorf("another request over the clone: %v, want a permanent refusal", err)
	}
	forced, err := c.makeClones(ctx, event("r3", messages.CloneRequest{Name: "vm1.qcow2", Format: image.FormatQCOW2, Force: true}), blob.Path, noProgress)
	if err != nil || len(forced) != 1 {
		t.Fatalf("forced: %+v, %v", forced, err)
	}
	if after, err := os.Stat(first[0].Path); err != nil || os.SameFile(before, after) {
		t.Errorf("force did not replace the clone")
	}
	// One refused name fails the request before any clone is made.
	if err := os.WriteFile(filepath.Join(dir, "taken.raw"), []byte("someone's"), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = c.makeClones(ctx, event("r6", messages.CloneRequest{Name: "fresh.raw"}, messages.CloneRequest{Name: "taken.raw", Force: true}), blob.Path, noProgress)
	if !stage.IsPermanent(err) || !strings.Contains(err.Error(), "not a clone this host recorded") {
		t.Errorf("a request with a taken name: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(dir, "fresh.raw")); err == nil {
		t.Error("a refused request left a clone behind")
	}
	// A name with a path is refused by the converter too, whatever the
	// resolver let through.
	_, err = c.makeClones(ctx, event("r4", messages.CloneRequest{Name: "../vm.raw"}), blob.Path, noProgress)
	if !stage.IsPermanent(err) || !strings.Contains(err.Error(), "path separator") {
		t.Errorf("a path as a name: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(filepath.Dir(dir), "vm.raw")); err == nil {
		t.Error("a clone was written outside the clone directory")
	}
	// A host without a clone directory makes none.
	c.CloneDir = ""
	if _, err := c.makeClones(ctx, event("r5", messages.CloneRequest{Name: "vm5.raw"}), blob.Path, noProgress); !stage.IsPermanent(err) || !strings.Contains(err.Error(), "no clone directory") {
		t.Errorf("no clone directory: %v", err)
	}
}

// TestCloneForceStaysInItsNamespace: force replaces a clone this host
// recorded, but a clone is a VM's disk: bob, naming alice's clone with
// force, must not replace it (he did: any recorded clone was fair game);
// alice may.
func TestCloneForceStaysInItsNamespace(t *testing.T) {
	ctx := context.Background()
	st, blob := storeWithDisk(ctx, t)
	c := &ConverterStage{Store: st, Host: "mac1", CloneDir: t.TempDir(), Logger: slog.New(slog.DiscardHandler)}
	event := func(ns, id string, force bool) messages.AssetEvent {
		return messages.AssetEvent{Namespace: ns, RequestID: id, Spec: image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64},
			Format: image.FormatRaw, Target: "mac1", Clones: []messages.CloneRequest{{Name: "vm1.raw", Force: force}}}
	}
	noProgress := func(messages.Progress) {}
	alices, err := c.makeClones(ctx, event("alice", "a1", false), blob.Path, noProgress)
	if err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(alices[0].Path)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		what, ns, id, refusal string
	}{
		{"bob, with force", "bob", "b1", "another namespace"},
		{"a request of no namespace, with force", "", "n1", "another namespace"},
		{"alice again, with force", "alice", "a2", ""},
	} {
		_, err := c.makeClones(ctx, event(tc.ns, tc.id, true), blob.Path, noProgress)
		after, serr := os.Stat(alices[0].Path)
		if serr != nil {
			t.Fatal(serr)
		}
		switch {
		case tc.refusal == "" && err != nil:
			t.Errorf("%s: %v", tc.what, err)
		case tc.refusal != "" && (!stage.IsPermanent(err) || !strings.Contains(err.Error(), tc.refusal)):
			t.Errorf("%s: %v, want a permanent refusal naming %q", tc.what, err, tc.refusal)
		case tc.refusal != "" && !os.SameFile(before, after):
			t.Errorf("%s replaced alice's clone", tc.what)
		}
	}
}

// storeWithDisk is a store holding one small disk blob.
func storeWithDisk(ctx context.Context, t *testing.T) (*store.Store, content.BlobInfo) {
	t.Helper()
	st, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte("disk"), 1<<14)
	sum := sha256.Sum256(data)
	blob, err := st.Ingest(ctx, digest.Digest{Algorithm: digest.SHA256, Hex: hex.EncodeToString(sum[:])}, int64(len(data)), bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	return st, blob
}
