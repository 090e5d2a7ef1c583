package pipeline_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmprep/vmprep/internal/lease"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/messages"
	"github.com/vmprep/vmprep/pkg/objectstore"
)

// TestForgedLeaseIsTakenOver: a lease on the disk's digest that its holder
// renews forever without progress (a forged one, planted before the
// request) would stall that download for good; the fetcher takes it over
// after the stall bound and the request completes.
func TestForgedLeaseIsTakenOver(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64))
	f := newFleet(t, m)
	stall := 2 * time.Second
	f.host("gateway", []string{messages.StageResolver, messages.StageCollector, messages.StageVerifier}, nil)
	f.host("fetch1", []string{messages.StageFetcher}, func(d *pipeline.Deps) { d.LeaseStall, d.OriginTimeout = stall, stall/2 })

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	js, _ := jetstream.New(f.conn())
	kv, err := js.KeyValue(ctx, messages.BucketLeases)
	if err != nil {
		t.Fatal(err)
	}
	d := m.Digest(m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk))
	forged, err := lease.New(kv, "forger", pipeline.LeaseTTL).TryAcquire(ctx, string(d.Algorithm)+"."+d.Hex)
	if err != nil {
		t.Fatal(err)
	}
	lost := make(chan error, 1)
	go func() {
		for ctx.Err() == nil {
			if err := forged.Renew(ctx, 1000); err != nil {
				lost <- err
				return
			}
			time.Sleep(200 * time.Millisecond)
		}
	}()

	res := prepare(t, f.conn(), messages.PrepareRequest{RequestID: "past-forger", Format: catalog.FormatQCOW2, ClientConverts: true,
		Spec: catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}})
	if res.Status != messages.ResultPrepared {
		t.Fatalf("request behind a forged lease: %+v", res.Failure)
	}
	select {
	case err := <-lost:
		if !errors.Is(err, lease.ErrLost) {
			t.Errorf("the forger's renewal failed with %v, want ErrLost", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("the forger still holds its lease")
	}
}

// TestFalseCorruptReportKeepsTheObject: a corruption report is a hint; the
// healer reads the object itself and keeps a good one.
func TestFalseCorruptReportKeepsTheObject(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64))
	f := newFleet(t, m)
	f.host("gateway", []string{messages.StageResolver, messages.StageCollector, messages.StageFetcher, messages.StageVerifier}, nil)
	res := prepare(t, f.conn(), messages.PrepareRequest{RequestID: "good", Format: catalog.FormatQCOW2, ClientConverts: true,
		Spec: catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}})
	if res.Status != messages.ResultPrepared {
		t.Fatalf("%+v", res.Failure)
	}
	ctx := context.Background()
	d := m.Digest(m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleKernel))
	objs := f.objects()
	before, err := objs.Stat(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(f.conn())
	ack := reportCorrupt(t, js, before.Bucket, before.Name, before.NUID)
	waitReportAnswered(t, js, string(d.Algorithm)+"."+d.Hex, ack)
	after, err := objs.Stat(ctx, d)
	if err != nil || after.NUID != before.NUID {
		t.Fatalf("a good object reported corrupt was changed: %+v, %v", after, err)
	}
}

func reportCorrupt(t *testing.T, js jetstream.JetStream, bucket, name, nuid string) uint64 {
	t.Helper()
	data, err := messages.Encode(messages.TypeCorruptReport, &messages.CorruptReport{
		Object: messages.ObjectRef{Bucket: bucket, Name: name, NUID: nuid}, Reason: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ack, err := js.Publish(context.Background(), messages.SubjectCorrupt, data)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence
}

// waitReportAnswered waits until the healer recorded a recheck of key that
// answers the report with sequence seq.
func waitReportAnswered(t *testing.T, js jetstream.JetStream, key string, seq uint64) {
	t.Helper()
	kv, err := js.KeyValue(context.Background(), messages.BucketVerified)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(time.Minute)
	for time.Now().Before(deadline) {
		if e, err := kv.Get(context.Background(), key); err == nil {
			var rec struct {
				ReportSeq uint64 `json:"report_seq"`
			}
			if json.Unmarshal(e.Value(), &rec) == nil && rec.ReportSeq >= seq {
				return
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("the healer did not answer report %d for %s", seq, key)
}

// TestConverterReportsCorruptObject: an object rewritten in place (same
// version, so the verifier's record still matches) is caught by the
// targeted converter that pulls it. The converter may not delete it: it
// reports it and its request fails saying so; the healer re-reads and
// deletes it, and the next request fetches it again and succeeds.
func TestConverterReportsCorruptObject(t *testing.T) {
	t.Parallel()
	m := testmirror.New(t, testmirror.WithArches(catalog.ArchAMD64))
	f := newFleet(t, m)
	f.host("gateway", []string{messages.StageResolver, messages.StageCollector, messages.StageFetcher, messages.StageVerifier}, nil)
	spec := catalog.ImageSpec{Distro: "ubuntu", Version: "24.04", Arch: catalog.ArchAMD64}
	client := f.conn()
	if res := prepare(t, client, messages.PrepareRequest{RequestID: "warm", Spec: spec, Format: catalog.FormatQCOW2, ClientConverts: true}); res.Status != messages.ResultPrepared {
		t.Fatalf("%+v", res.Failure)
	}
	f.host("mac1", []string{messages.StageConverter}, func(d *pipeline.Deps) { d.TargetedOnly = true })
	ctx := context.Background()
	diskRel := m.Path("ubuntu", "24.04", catalog.ArchAMD64, catalog.RoleDisk)
	d := m.Digest(diskRel)
	objs := f.objects()
	stored, err := objs.Stat(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	js, _ := jetstream.New(client)
	corruptInPlace(t, js, stored.NUID)

	bad := prepare(t, client, messages.PrepareRequest{RequestID: "finds-it", Spec: spec, Format: catalog.FormatQCOW2, Target: "mac1"})
	if bad.Status != messages.ResultFailed || bad.Failure == nil || !strings.Contains(bad.Failure.Cause, "reported") {
		t.Fatalf("the request whose converter found the object corrupt: %s %+v", bad.Status, bad.Failure)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		cur, err := objs.Stat(ctx, d)
		if errors.Is(err, objectstore.ErrNotFound) || (err == nil && cur.NUID != stored.NUID) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the reported corrupt object was not deleted")
		}
		time.Sleep(100 * time.Millisecond)
	}
	served := m.BytesServed(diskRel)
	healed := prepare(t, client, messages.PrepareRequest{RequestID: "after", Spec: spec, Format: catalog.FormatQCOW2, Target: "mac1"})
	if healed.Status != messages.ResultPrepared {
		t.Fatalf("the request after healing: %+v", healed.Failure)
	}
	if m.BytesServed(diskRel) == served {
		t.Error("the disk was not fetched again from the origin")
	}
	if got := testutil.FileSHA256(t, healed.Files[catalog.RoleDisk].Path); got != d.Hex {
		t.Errorf("disk %s, want %s", got, d.Hex)
	}
}

// corruptInPlace changes an object version's bytes without a new version:
// its first chunk is deleted and stored again, a byte flipped, after the
// others (same size, same NUID, so a verified record still matches).
func corruptInPlace(t *testing.T, js jetstream.JetStream, nuid string) {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, objectstore.StreamName(bucket))
	if err != nil {
		t.Fatal(err)
	}
	subj := "$O." + bucket + ".C." + nuid
	chunk, err := s.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(subj))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteMsg(ctx, chunk.Sequence); err != nil {
		t.Fatal(err)
	}
	chunk.Data[0] ^= 0xff
	if _, err := js.Publish(ctx, subj, chunk.Data); err != nil {
		t.Fatal(err)
	}
}
