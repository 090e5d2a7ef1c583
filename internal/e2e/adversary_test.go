package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/vmprep/vmprep/internal/cluster"
	"github.com/vmprep/vmprep/internal/objectstore"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
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
	forgeBobsResult(t, func(ctx context.Context, nc *nats.Conn, errs chan error, resultSubject string) {
		subject := "$JS.API.CONSUMER.CREATE.KV_VMPREP_LEASES.relay.$KV.VMPREP_LEASES.relay"
		body := `{"stream_name":"KV_VMPREP_LEASES","config":{"name":"relay","deliver_subject":"` + resultSubject +
			`","filter_subject":"$KV.VMPREP_LEASES.relay","ack_policy":"none","deliver_policy":"last_per_subject"}}`
		if _, err := nc.RequestWithContext(ctx, subject, []byte(body)); err == nil {
			t.Errorf("the fetcher created a push consumer of the leases delivering onto bob's result subject")
		} else if !violated(t, errs, subject) {
			t.Errorf("creating the relay consumer: %v, want a permissions violation", err)
		}
	})
}

// TestFetcherRelaysAResultByReplySubject is the same attack through a
// direct get: a request's reply subject is not checked against the
// requester's publish permissions (nats-server checks only the subject),
// so the fetcher asks for its forged lease value by direct get with bob's
// result subject as the reply subject, and the server publishes the value
// there: VMPREP_RESULTS stores it and bob's waiting client takes it live.
// Any user that may direct-get from a stream whose content it (or a party
// it colludes with, or the mirror, for unverified chunks) writes can do
// this: the fetcher (leases, objects), the verifier (object metadata).
// Permissions cannot close it; the client must authenticate a result
// (e.g. a signature by the collector's key), not trust its subject.
func TestFetcherRelaysAResultByReplySubject(t *testing.T) {
	forgeBobsResult(t, func(ctx context.Context, nc *nats.Conn, _ chan error, resultSubject string) {
		if err := nc.PublishRequest("$JS.API.DIRECT.GET.KV_VMPREP_LEASES.$KV.VMPREP_LEASES.relay", resultSubject, nil); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
	})
}

// forgeBobsResult runs deploy/nats with a resolver and no fetcher: the
// attacker is the fetcher. bob prepares; the attacker takes bob's fetch
// from its own consumer, stores its own disk and a forged prepared result
// naming it (as the lease value "relay"), and relay tries to get that
// value onto bob's result subject. bob's prepare must not come back with
// the attacker's bytes.
func forgeBobsResult(t *testing.T, relay func(ctx context.Context, nc *nats.Conn, errs chan error, resultSubject string)) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	d := startDeployment(t, "resolver")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bobCache := t.TempDir()
	run := d.c.Prepare(image.ArchAMD64, image.FormatRaw, append(d.as("bob")[2:], "--cache-dir", bobCache, "--timeout", "30s")...)

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
		Files: map[image.Role]messages.File{image.RoleDisk: {Digest: evilDigest, Size: int64(len(evil)), Format: image.FormatRaw,
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
	relay(ctx, fnc, ferrs, messages.ResultSubjectIn("bob", ev.RequestID))

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

// TestAdversaryDenials runs deploy/nats as a three-node cluster (setup and
// a resolver) and attacks it as each party with what auth.conf leaves
// open or nearly open: JetStream API subjects beyond the ones each test
// already covers (pause, unpin, purge, message delete, account purge,
// server and meta subjects, listings), writes of state another party owns
// (request state, verified records, object metadata, results, done events
// of a host), and wide subscriptions. Each is refused by the server with a
// permissions violation naming the subject.
//
// Then a relay permissions cannot stop: a request's reply subject is not
// checked against the requester's rights, so alice makes the server publish
// her own (failed) result, by direct get, onto bob's result subject for an
// id bob will use (ids are the client's to choose: --request-id), once the
// results stream's duplicate window has passed; VMPREP_RESULTS stores it.
// bob's client must not take it as his answer: it names another namespace
// and request id. (It checked only the image, format and target, and bob's
// prepare ended with alice's result.)
func TestAdversaryDenials(t *testing.T) {
	if testing.Short() {
		t.Skip("multi-process test")
	}
	d := startDeployment(t, "resolver")
	prepare := func(user string, extra ...string) (messages.Result, string) {
		args := append([]string{"prepare", "--json", "--arch", "amd64", "--format", "raw", "--cache-dir", t.TempDir(), "--timeout", "2m"}, d.as(user)...)
		out, _ := exec.Command(filepath.Join(d.c.Bin, "vmprep"), append(append(args, extra...), "ubuntu", "22.04")...).Output()
		var res messages.Result
		if err := json.Unmarshal(out, &res); err != nil {
			t.Fatalf("%s's prepare printed no result: %v\n%s", user, err, out)
		}
		return res, string(out)
	}
	// 22.04 is not on the mirror: a failed result, quickly. The relay of it
	// comes after the denials, past the duplicate window (2 min: the
	// stored result carries the collector's message id).
	alices, _ := prepare("alice")
	if alices.Status != messages.ResultFailed || alices.Namespace != "alice" {
		t.Fatalf("alice's result: %+v", alices)
	}
	relayAfter := time.Now().Add(2*time.Minute + 10*time.Second)
	request := func(subject, body string) func(*nats.Conn) error {
		return func(nc *nats.Conn) error {
			_, err := nc.Request(subject, []byte(body), 2*time.Second)
			return err
		}
	}
	publish := func(subject string) func(*nats.Conn) error {
		return func(nc *nats.Conn) error { return publishFlush(nc, subject) }
	}
	subscribe := func(subject string) func(*nats.Conn) error {
		return func(nc *nats.Conn) error { return subscribeFlush(nc, subject) }
	}
	type attack struct {
		user, subject string
		do            func(*nats.Conn) error
	}
	var attacks []attack
	api := func(users []string, subjects ...string) {
		for _, u := range users {
			for _, s := range subjects {
				attacks = append(attacks, attack{u, s, request(s, `{}`)})
			}
		}
	}
	pub := func(users []string, subjects ...string) {
		for _, u := range users {
			for _, s := range subjects {
				attacks = append(attacks, attack{u, s, publish(s)})
			}
		}
	}
	everyone := []string{"resolver", "fetcher", "verifier", "converter", "alice"}
	api(everyone,
		"$JS.API.CONSUMER.PAUSE.VMPREP_WORK.fetcher", "$JS.API.CONSUMER.UNPIN.VMPREP_WORK.fetcher",
		"$JS.API.CONSUMER.DELETE.VMPREP_WORK.collector", "$JS.API.CONSUMER.CREATE.VMPREP_RESULTS",
		"$JS.API.CONSUMER.CREATE.KV_VMPREP_REQUESTS.w.$KV.VMPREP_REQUESTS.>", "$JS.API.CONSUMER.CREATE.KV_VMPREP_LEASES.w.$KV.VMPREP_LEASES.>",
		"$JS.API.CONSUMER.CREATE.OBJ_vmprep.w.$O.vmprep.M.>", "$JS.API.CONSUMER.DURABLE.CREATE.VMPREP_WORK.fetcher",
		"$JS.API.STREAM.UPDATE.VMPREP_WORK", "$JS.API.STREAM.DELETE.OBJ_vmprep", "$JS.API.STREAM.PURGE.VMPREP_RESULTS",
		"$JS.API.STREAM.PURGE.OBJ_vmprep", "$JS.API.STREAM.PURGE.KV_VMPREP_REQUESTS", "$JS.API.STREAM.MSG.DELETE.VMPREP_RESULTS",
		"$JS.API.STREAM.MSG.DELETE.KV_VMPREP_VERIFIED", "$JS.API.ACCOUNT.PURGE", "$JS.API.META.LEADER.STEPDOWN",
		"$JS.API.STREAM.LEADER.STEPDOWN.VMPREP_WORK", "$JS.API.STREAM.PEER.REMOVE.VMPREP_WORK", "$JS.API.SERVER.REMOVE",
		"$JS.API.STREAM.LIST", "$JS.API.CONSUMER.LIST.VMPREP_WORK", "$JS.API.STREAM.SNAPSHOT.VMPREP_RESULTS",
		"$JS.API.STREAM.CREATE.VMPREP_RESULTS2", "$JS.API.STREAM.RESTORE.VMPREP_RESULTS2")
	// Writes of state another party owns.
	pub([]string{"fetcher", "verifier", "converter", "alice"}, "vmprep.result.bob.forged", "$KV.VMPREP_REQUESTS.bob.forged")
	// (The fetcher writes object metadata: it puts objects. Readers hash
	// what they pull against the digest they asked for.)
	pub([]string{"resolver", "fetcher", "converter", "alice"}, "$KV.VMPREP_VERIFIED.forged")
	pub([]string{"resolver", "converter", "alice"}, "$O.vmprep.M.forged")
	pub([]string{"resolver", "fetcher", "verifier", "converter", "alice"}, messages.DoneSubjectOf("mac1"))
	pub([]string{"resolver", "verifier", "converter", "alice"}, "$KV.VMPREP_LEASES.forged")
	pub([]string{"alice"}, "vmprep.prepare.bob", "vmprep.asset.fetch", "vmprep.progress.bob.x", "$KV.VMPREP_PROCESSES.resolver.x.1")
	pub([]string{"converter"}, "$KV.VMPREP_PROCESSES.fetcher.x.1", "vmprep.asset.fetch", "vmprep.asset.verify")
	for _, u := range everyone {
		for _, s := range []string{">", "vmprep.>", "_INBOX.>", "$JS.>", "$KV.>", "$O.>"} {
			attacks = append(attacks, attack{u, s, subscribe(s)})
		}
	}
	for _, a := range attacks {
		t.Run(a.user+" "+a.subject, func(t *testing.T) {
			nc, _, errs := d.connect(a.user)
			defer nc.Close()
			if err := a.do(nc); err == nil {
				t.Errorf("%s: %s answered", a.user, a.subject)
			}
			if !violated(t, errs, a.subject) {
				t.Errorf("%s: no permissions violation for %q", a.user, a.subject)
			}
		})
	}

	time.Sleep(time.Until(relayAfter))
	nc, _, _ := d.connect("alice")
	const bobsID = "planned-by-bob"
	if err := nc.PublishRequest("$JS.API.DIRECT.GET.VMPREP_RESULTS."+messages.ResultSubjectIn("alice", alices.RequestID), messages.ResultSubjectIn("bob", bobsID), nil); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	_, admin, _ := d.connect("admin")
	cluster.WaitFor(t, "alice's result stored on bob's subject (the relay this guards against)", 30*time.Second, func() bool {
		s, err := admin.Stream(context.Background(), messages.StreamResults)
		if err != nil {
			return false
		}
		_, err = s.GetLastMsgForSubject(context.Background(), messages.ResultSubjectIn("bob", bobsID))
		return err == nil
	})
	bobs, out := prepare("bob", "--request-id", bobsID)
	if bobs.RequestID != bobsID || bobs.Namespace != "bob" {
		t.Errorf("bob's prepare (--request-id %s) ended with request %s of namespace %q (alice's, relayed):\n%s", bobsID, bobs.RequestID, bobs.Namespace, out)
	}
}
