package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/objectstore"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

func testDigest(c string) digest.Digest {
	return digest.Digest{Algorithm: digest.SHA256, Hex: strings.Repeat(c, 64)}
}

// admitFixture is a request for ubuntu 24.04 resolved to three signed
// assets, and the done events the pipeline itself sends for it.
func admitFixture(format image.DiskFormat, target string, clientConverts bool) (requestState, map[image.Role]messages.AssetEvent) {
	spec := image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}
	resolved := spec
	resolved.Serial = "20260101"
	trust := image.Trust{Signed: true, Signer: "AAAA1111", ManifestURL: "http://127.0.0.1/SHA256SUMS"}
	res := &catalog.Resolution{Spec: resolved, Assets: []image.Asset{
		{Role: image.RoleKernel, Name: "vmlinuz", URL: "http://127.0.0.1/vmlinuz", Digest: testDigest("1"), Size: 10, Trust: trust},
		{Role: image.RoleInitramfs, Name: "initrd", URL: "http://127.0.0.1/initrd", Digest: testDigest("2"), Size: 20, Trust: trust},
		{Role: image.RoleDisk, Name: "disk.img", URL: "http://127.0.0.1/disk.img", Digest: testDigest("3"), Size: 30, Format: image.FormatQCOW2, Trust: trust},
	}}
	st := requestState{Namespace: "bob", Spec: spec, Format: format, Target: target, ClientConverts: clientConverts, Roles: roles(*res), Resolution: res}
	evs := map[image.Role]messages.AssetEvent{}
	for _, a := range res.Assets {
		ev := messages.AssetEvent{Namespace: "bob", RequestID: "r1", Spec: spec, Resolved: &res.Spec, Format: format, Roles: st.Roles,
			Target: target, ClientConverts: clientConverts, Asset: a, Status: messages.StatusVerified, Size: a.Size,
			Object: &messages.ObjectRef{Bucket: "vmprep", Name: objectstore.Name(a.Digest), NUID: "n", Size: a.Size}}
		if a.Role == image.RoleDisk {
			ev.FileFormat = a.Format
		}
		evs[a.Role] = ev
	}
	return st, evs
}

// testObjectMedium is the object-store medium of bucket "vmprep" (the
// admitFixture's), on an embedded JetStream: what the collector of such a
// deployment admits.
func testObjectMedium(t *testing.T) *objectStore {
	t.Helper()
	_, _, js := testutil.EmbeddedJetStream(t)
	objs, err := objectstore.Open(context.Background(), js, objectstore.Config{Bucket: "vmprep"})
	if err != nil {
		t.Fatal(err)
	}
	return &objectStore{objects: objs}
}

// TestCollectorAdmitsOnlyWhatTheResolutionSays: the collector's checks of a
// done event against its publisher's subject and the recorded resolution.
func TestCollectorAdmitsOnlyWhatTheResolutionSays(t *testing.T) {
	t.Parallel()
	verifier, fetcher, resolver := messages.DoneSubject(messages.StageVerifier), messages.DoneSubject(messages.StageFetcher), messages.DoneSubject(messages.StageResolver)
	shared, mac1, mac2 := messages.DoneSubject(messages.StageConverter), messages.DoneSubjectOf("mac1"), messages.DoneSubjectOf("mac2")
	onHost := func(ev messages.AssetEvent, host string) messages.AssetEvent {
		ev.Host, ev.Path = host, "/var/cache/vmprep/blobs/"+string(ev.Asset.Role)
		return ev
	}
	media := map[string]Medium{"": sharedCache{}, "vmprep": testObjectMedium(t)}
	tests := []struct {
		name    string
		bucket  string // "" = one shared cache
		format  image.DiskFormat
		target  string
		client  bool
		noState bool
		subject string
		role    image.Role
		edit    func(ev *messages.AssetEvent)
		refused string // "" = admitted; else a word of the reason
	}{
		// What the pipeline sends is admitted.
		{name: "shared cache: verifier finishes a kernel", subject: verifier, role: image.RoleKernel,
			edit: func(ev *messages.AssetEvent) { ev.Object, ev.Path = nil, "/cache/blobs/x" }},
		{name: "shared cache: converter converts a disk", format: image.FormatRaw, subject: shared, role: image.RoleDisk,
			edit: func(ev *messages.AssetEvent) {
				ev.Object, ev.Status, ev.FileFormat, ev.Size = nil, messages.StatusConverted, image.FormatRaw, 99
			}},
		{name: "objects: targeted converter places a disk", bucket: "vmprep", target: "mac1", subject: mac1, role: image.RoleDisk,
			edit: func(ev *messages.AssetEvent) { *ev = onHost(*ev, "mac1") }},
		{name: "objects: untargeted converter unpacks a kernel", bucket: "vmprep", subject: mac2, role: image.RoleKernel,
			edit: func(ev *messages.AssetEvent) {
				*ev = onHost(*ev, "mac2")
				ev.Status, ev.Size = messages.StatusConverted, 99
			}},
		{name: "objects: client converts, verifier finishes", bucket: "vmprep", format: image.FormatRaw, client: true, subject: verifier, role: image.RoleDisk},
		{name: "a failure from the fetcher", subject: fetcher, role: image.RoleDisk,
			edit: func(ev *messages.AssetEvent) {
				ev.Status, ev.Failure = messages.StatusFailed, &messages.Failure{Stage: messages.StageFetcher, Cause: "404"}
			}},
		{name: "a failure from the resolver before any state", noState: true, subject: resolver,
			edit: func(ev *messages.AssetEvent) {
				ev.Asset, ev.Status, ev.Failure = image.Asset{}, messages.StatusFailed, &messages.Failure{Stage: messages.StageResolver, Cause: "no such image"}
			}},

		// Forgeries are refused, each with its reason.
		{name: "attacker's digest", subject: verifier, role: image.RoleDisk, refused: "digest",
			edit: func(ev *messages.AssetEvent) { ev.Object, ev.Asset.Digest = nil, testDigest("e") }},
		{name: "attacker's signer", subject: verifier, role: image.RoleDisk, refused: "signer",
			edit: func(ev *messages.AssetEvent) { ev.Object, ev.Asset.Trust.Signer = nil, "EEEE" }},
		{name: "unsigned claim", subject: verifier, role: image.RoleDisk, refused: "signer",
			edit: func(ev *messages.AssetEvent) { ev.Object, ev.Asset.Trust = nil, image.Trust{} }},
		{name: "another URL", subject: verifier, role: image.RoleDisk, refused: "name",
			edit: func(ev *messages.AssetEvent) { ev.Object, ev.Asset.URL = nil, "http://127.0.0.1/evil" }},
		{name: "another build", subject: verifier, role: image.RoleDisk, refused: "resolved build",
			edit: func(ev *messages.AssetEvent) {
				r := *ev.Resolved
				r.Serial = "20990101"
				ev.Object, ev.Resolved = nil, &r
			}},
		{name: "a role the resolution lacks", subject: verifier, role: image.RoleDisk, refused: "role",
			edit: func(ev *messages.AssetEvent) { ev.Object, ev.Asset.Role = nil, "firmware" }},
		{name: "another namespace's request", subject: verifier, role: image.RoleDisk, refused: "namespace",
			edit: func(ev *messages.AssetEvent) { ev.Object, ev.Namespace = nil, "alice" }},
		{name: "success from the fetcher", subject: fetcher, role: image.RoleDisk, refused: "only the verifier and converters",
			edit: func(ev *messages.AssetEvent) { ev.Object = nil }},
		{name: "success from the resolver", subject: resolver, role: image.RoleKernel, refused: "only the verifier and converters",
			edit: func(ev *messages.AssetEvent) { ev.Object = nil }},
		{name: "converted from the verifier", format: image.FormatRaw, subject: verifier, role: image.RoleDisk, refused: "only converters convert",
			edit: func(ev *messages.AssetEvent) {
				ev.Object, ev.Status, ev.FileFormat = nil, messages.StatusConverted, image.FormatRaw
			}},
		{name: "a qcow2 disk for a raw request", format: image.FormatRaw, subject: verifier, role: image.RoleDisk, refused: "asked for",
			edit: func(ev *messages.AssetEvent) { ev.Object = nil }},
		{name: "success without a recorded request", noState: true, subject: verifier, role: image.RoleDisk, refused: "no recorded resolution",
			edit: func(ev *messages.AssetEvent) { ev.Object = nil }},
		{name: "a host in a shared cache", subject: verifier, role: image.RoleDisk, refused: "shared cache",
			edit: func(ev *messages.AssetEvent) { *ev = onHost(*ev, "mac1"); ev.Object = nil }},
		{name: "a host claimed by the verifier", bucket: "vmprep", subject: verifier, role: image.RoleDisk, refused: "only that host's converter",
			edit: func(ev *messages.AssetEvent) { *ev = onHost(*ev, "mac1") }},
		{name: "a host claimed from another host's subject", bucket: "vmprep", target: "mac1", subject: mac2, role: image.RoleDisk, refused: "only that host's converter",
			edit: func(ev *messages.AssetEvent) { *ev = onHost(*ev, "mac1") }},
		{name: "a targeted request finished by another host", bucket: "vmprep", target: "mac1", subject: mac2, role: image.RoleDisk, refused: "targeted at mac1",
			edit: func(ev *messages.AssetEvent) { *ev = onHost(*ev, "mac2") }},
		{name: "a targeted request finished by the verifier", bucket: "vmprep", target: "mac1", subject: verifier, role: image.RoleDisk, refused: "targeted at mac1"},
		{name: "another object", bucket: "vmprep", subject: verifier, role: image.RoleDisk, refused: "object",
			edit: func(ev *messages.AssetEvent) { ev.Object.Name = objectstore.Name(testDigest("e")) }},
		{name: "no object", bucket: "vmprep", subject: verifier, role: image.RoleDisk, refused: "object",
			edit: func(ev *messages.AssetEvent) { ev.Object = nil }},
		{name: "another size", bucket: "vmprep", subject: verifier, role: image.RoleDisk, refused: "size",
			edit: func(ev *messages.AssetEvent) { ev.Size = 31 }},
		{name: "a host-less converter with objects", bucket: "vmprep", subject: shared, role: image.RoleDisk, refused: "host's subject"},
		{name: "a converter for a client that converts", bucket: "vmprep", client: true, subject: mac1, role: image.RoleDisk, refused: "requester converts",
			edit: func(ev *messages.AssetEvent) { *ev = onHost(*ev, "mac1") }},
		{name: "not a done subject", subject: "vmprep.asset.done.collector", role: image.RoleDisk, refused: "no stage's done subject"},
		{name: "a failure before any state from the fetcher", noState: true, subject: fetcher, role: image.RoleDisk,
			edit: func(ev *messages.AssetEvent) {
				ev.Status, ev.Failure = messages.StatusFailed, &messages.Failure{Stage: messages.StageFetcher, Cause: "x"}
			}},
		{name: "a failure in another stage's name", subject: fetcher, role: image.RoleDisk, refused: "failure of stage",
			edit: func(ev *messages.AssetEvent) {
				ev.Status, ev.Failure = messages.StatusFailed, &messages.Failure{Stage: messages.StageVerifier, Cause: "x"}
			}},
		{name: "a targeted request failed by another host", bucket: "vmprep", target: "mac1", subject: mac2, role: image.RoleDisk, refused: "targeted at mac1",
			edit: func(ev *messages.AssetEvent) {
				ev.Status, ev.Failure = messages.StatusFailed, &messages.Failure{Stage: messages.StageConverter, Cause: "x"}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			format := tt.format
			if format == "" {
				format = image.FormatQCOW2
			}
			st, evs := admitFixture(format, tt.target, tt.client)
			ev := evs[tt.role]
			if tt.edit != nil {
				tt.edit(&ev)
			}
			var recorded *requestState
			if !tt.noState {
				recorded = &st
			}
			c := &CollectorStage{Medium: media[tt.bucket], Logger: slog.New(slog.DiscardHandler)}
			got, err := c.admit(tt.subject, recorded, ev)
			if tt.refused == "" {
				if err != nil {
					t.Fatalf("refused what the pipeline sends: %v", err)
				}
				if ev.Status != messages.StatusFailed && (got.Asset != st.Resolution.Assets[indexOf(st, got.Asset.Role)] || *got.Resolved != st.Resolution.Spec) {
					t.Errorf("admitted asset %+v is not the resolution's", got.Asset)
				}
				return
			}
			if err == nil {
				t.Fatal("admitted a forged done event")
			}
			if !stage.IsPoison(err) || !errors.Is(err, errRefused) || !strings.Contains(err.Error(), tt.refused) {
				t.Errorf("refusal %v: want a poison errRefused saying %q", err, tt.refused)
			}
			// The runner's failure policy must not turn the refusal into a
			// failed result for the victim's request.
			if out := FailurePolicy(messages.StageCollector, "", slog.New(slog.DiscardHandler))(stage.Message{Subject: tt.subject}, err); len(out) != 0 {
				t.Errorf("a refused done event yielded %d events", len(out))
			}
		})
	}
}

func indexOf(st requestState, r image.Role) int {
	for i, a := range st.Resolution.Assets {
		if a.Role == r {
			return i
		}
	}
	return -1
}

// TestForgedDoneChangesNothing: through Handle and a real request-state
// bucket, a forged success leaves the state as it was and yields no result,
// and the genuine events then complete the request from the resolution.
func TestForgedDoneChangesNothing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	_, _, js := testutil.EmbeddedJetStream(t)
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: messages.BucketRequests})
	if err != nil {
		t.Fatal(err)
	}
	reqs := NewRequests(js.Conn(), kv)
	cache, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	c := &CollectorStage{Store: cache, Requests: reqs, Host: "h", Medium: testObjectMedium(t), Logger: slog.New(slog.DiscardHandler)}
	st, evs := admitFixture(image.FormatQCOW2, "", true)
	key := messages.RequestKey("bob", "r1")
	if err := reqs.Create(ctx, key, st); err != nil {
		t.Fatal(err)
	}
	send := func(subject string, ev messages.AssetEvent) ([]stage.Event, error) {
		data, err := messages.Encode(messages.TypeAsset, &ev)
		if err != nil {
			t.Fatal(err)
		}
		// Marked as its subject's publisher marks it: the forgeries here are
		// of what the subject's own stage may say.
		writer, _ := messages.DoneWriterOf(subject)
		return c.Handle(ctx, stage.Message{Subject: subject, Data: data, Delivery: 1}.WrittenBy(writer))
	}
	before, rev, err := reqs.Load(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	for role, ev := range evs {
		forged := ev
		forged.Asset.Digest, forged.Object = testDigest("e"), &messages.ObjectRef{Bucket: "vmprep", Name: objectstore.Name(testDigest("e")), Size: ev.Size}
		forged.Host, forged.Path = "h", "/evil/"+string(role)
		for _, subject := range []string{messages.DoneSubject(messages.StageFetcher), messages.DoneSubject(messages.StageVerifier), messages.DoneSubjectOf("h")} {
			out, err := send(subject, forged)
			if err == nil || !stage.IsPoison(err) || len(out) != 0 {
				t.Fatalf("forged %s on %s: events %d, err %v", role, subject, len(out), err)
			}
		}
	}
	after, rev2, err := reqs.Load(ctx, key)
	if err != nil {
		t.Fatal(err)
	}
	if rev2 != rev || len(after.Done) != len(before.Done) || after.Final != nil {
		t.Fatalf("forgeries changed the request state: revision %d → %d, done %v", rev, rev2, after.Done)
	}
	var out []stage.Event
	for _, r := range st.Roles {
		if out, err = send(messages.DoneSubject(messages.StageVerifier), evs[r]); err != nil {
			t.Fatalf("genuine %s: %v", r, err)
		}
	}
	if len(out) != 1 {
		t.Fatalf("the last genuine done gave %d events", len(out))
	}
	var res messages.Result
	if err := messages.Decode(out[0].Data, messages.TypeResult, &res); err != nil {
		t.Fatal(err)
	}
	if res.Status != messages.ResultPrepared || res.Signer != "AAAA1111" || res.Files[image.RoleDisk].Digest != testDigest("3") || res.Host != "" {
		t.Errorf("result %+v", res)
	}
}
