package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmprep/vmprep/internal/cluster"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/messages"
	"github.com/vmprep/vmprep/pkg/objectstore"
)

// TestFetcherCannotRelayAResult: a compromised fetcher, with exactly its
// rights in deploy/nats/auth.conf, tries to make bob's waiting `vmprep
// prepare` accept a disk of its own making. It learns bob's request id
// from the work it is given (vmprep.asset.fetch), stores its own bytes
// under their own digest (it may write the object store), writes a forged
// `prepared` result naming them as a lease value (it may write
// VMPREP_LEASES) and creates a push consumer of the leases bucket whose
// deliver subject is bob's result subject: the server delivers for it,
// whatever its publish permissions say. With the right to create lease
// consumers (auth.conf before this test) bob's client printed a prepared
// result whose disk was the attacker's bytes; now the consumer create is
// refused and bob's request simply waits for a real fetcher.
func TestFetcherCannotRelayAResult(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	// No fetcher process: the attacker is the fetcher.
	d := startDeployment(t, "resolver")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bobCache := t.TempDir()
	run := d.c.Prepare(catalog.ArchAMD64, catalog.FormatRaw, append(d.as("bob")[2:], "--cache-dir", bobCache, "--timeout", "30s")...)

	fnc, fjs, ferrs := d.connect("fetcher")
	// The work it is given names bob's request.
	var ev messages.AssetEvent
	cluster.WaitFor(t, "a fetch for bob's request", 2*time.Minute, func() bool {
		m, err := fnc.Request("$JS.API.CONSUMER.MSG.NEXT."+messages.StreamWork+"."+messages.StageFetcher, []byte(`{"batch":1,"no_wait":true}`), 5*time.Second)
		return err == nil && m.Header.Get("Status") == "" && messages.Decode(m.Data, messages.TypeAsset, &ev) == nil && ev.Namespace == "bob"
	})

	// Its own bytes, stored under their own digest.
	evil := bytes.Repeat([]byte("attacker's disk "), 1<<12)
	sum := sha256.Sum256(evil)
	evilDigest := digest.Digest{Algorithm: digest.SHA256, Hex: hex.EncodeToString(sum[:])}
	evilFile := filepath.Join(t.TempDir(), "evil.raw")
	if err := os.WriteFile(evilFile, evil, 0o600); err != nil {
		t.Fatal(err)
	}
	objs, err := objectstore.Bind(ctx, fjs, cluster.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := objs.PutFile(ctx, evilDigest, evilFile, nil); err != nil {
		t.Fatalf("the fetcher may put objects: %v", err)
	}
	forged := messages.Result{Namespace: "bob", RequestID: ev.RequestID, Status: messages.ResultPrepared, Spec: ev.Spec, Format: ev.Format,
		Files: map[catalog.Role]messages.File{catalog.RoleDisk: {Digest: evilDigest, Size: int64(len(evil)), Format: catalog.FormatRaw,
			Object: &messages.ObjectRef{Bucket: cluster.Bucket, Name: objectstore.Name(evilDigest), Size: int64(len(evil))}}},
		Signer: "EEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEEE", CompletedAt: time.Now()}
	data, err := messages.Encode(messages.TypeResult, &forged)
	if err != nil {
		t.Fatal(err)
	}
	kv, err := fjs.KeyValue(ctx, messages.BucketLeases)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "relay", data); err != nil {
		t.Fatalf("the fetcher may write leases: %v", err)
	}
	subject := "$JS.API.CONSUMER.CREATE.KV_VMPREP_LEASES.relay.$KV.VMPREP_LEASES.relay"
	body := `{"stream_name":"KV_VMPREP_LEASES","config":{"name":"relay","deliver_subject":"` + messages.ResultSubjectIn("bob", ev.RequestID) +
		`","filter_subject":"$KV.VMPREP_LEASES.relay","ack_policy":"none","deliver_policy":"last_per_subject"}}`
	if _, err := fnc.RequestWithContext(ctx, subject, []byte(body)); err == nil {
		t.Errorf("the fetcher created a push consumer of the leases delivering onto bob's result subject")
	} else if !violated(t, ferrs, subject) {
		t.Errorf("creating the relay consumer: %v, want a permissions violation", err)
	}

	// bob's prepare must not come back with the attacker's disk.
	select {
	case err := <-waitRun(run):
		if err == nil {
			if b, rerr := os.ReadFile(lastDisk(t, run)); rerr == nil && bytes.Equal(b, evil) {
				t.Fatalf("bob's vmprep prepare accepted the fetcher's forged result: its disk is the attacker's bytes")
			}
			t.Fatalf("bob's vmprep prepare succeeded with no fetcher running")
		}
	case <-time.After(2 * time.Minute):
		t.Fatal("bob's prepare did not end")
	}
	_ = nats.ErrPermissionViolation
}

// lastDisk is the disk path of a finished prepare run's JSON result.
func lastDisk(t *testing.T, r *cluster.PrepareRun) string {
	t.Helper()
	var res messages.Result
	if err := json.Unmarshal([]byte(r.Stdout()), &res); err != nil {
		t.Fatalf("prepare output is not a result: %v\n%s", err, r.Stdout())
	}
	t.Logf("bob's result: %s", r.Stdout())
	return res.Disk
}
