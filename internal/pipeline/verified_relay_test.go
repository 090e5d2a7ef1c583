package pipeline

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/cluster"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/messages"
)

// TestVerifiedRecordRelayIsRefused: the fetcher may write leases and
// direct-get them; naming a verified record's subject as the reply
// subject, it has the server store a forged record there (for an object
// version it stored under a real digest), and the verifier would pass the
// object without streaming it. The verifier must not take the record.
func TestVerifiedRecordRelayIsRefused(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	_, nc, js := testutil.EmbeddedJetStream(t)
	verified, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: messages.BucketVerified})
	if err != nil {
		t.Fatal(err)
	}
	leases, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: messages.BucketLeases})
	if err != nil {
		t.Fatal(err)
	}
	v := newVerifiedObjects(nc, verified)
	genuine := digest.Digest{Algorithm: digest.SHA256, Hex: strings.Repeat("a", 64)}
	forged := digest.Digest{Algorithm: digest.SHA256, Hex: strings.Repeat("b", 64)}
	rec, _ := json.Marshal(verifiedRecord{NUID: "attackers-version", Size: 1})
	if _, err := stage.PutOwned(ctx, nc, messages.BucketVerified, verifiedKey(genuine), VerifiedWriter, rec, nil); err != nil {
		t.Fatal(err)
	}
	if got, ok := v.record(ctx, genuine); !ok || got.NUID != "attackers-version" {
		t.Fatalf("a genuine record reads %+v, %v", got, ok)
	}
	if _, err := leases.Put(ctx, "relay", rec); err != nil {
		t.Fatal(err)
	}
	subject := "$KV." + messages.BucketVerified + "." + verifiedKey(forged)
	if err := nc.PublishRequest("$JS.API.DIRECT.GET.KV_"+messages.BucketLeases+".$KV."+messages.BucketLeases+".relay", subject, nil); err != nil {
		t.Fatal(err)
	}
	cluster.WaitFor(t, "the relayed record stored", 30*time.Second, func() bool {
		_, err := verified.Get(ctx, verifiedKey(forged))
		return err == nil
	})
	if got, ok := v.record(ctx, forged); ok {
		t.Errorf("the verifier took a relayed record: %+v", got)
	}
}
