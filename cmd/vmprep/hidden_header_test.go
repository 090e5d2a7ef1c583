package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/fleet"
	"github.com/vmprep/vmprep/internal/fleetkv"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// hiddenHeader is a header block with a blank line inside: nats.go stops
// reading headers at the first blank line, so whatever the server appends
// to it — the relay markings of a direct get, Nats-Stream and Nats-Subject
// — is never seen by a reader. Before the blank line: the owner's marker,
// and the markings a genuine direct get of subject would carry.
func hiddenHeader(stream, subject, writer string) string {
	return "NATS/1.0\r\n" + stage.HeaderWriter + ": " + writer + "\r\nNats-Stream: " + stream +
		"\r\nNats-Subject: " + subject + "\r\nNats-Sequence: 1\r\nNats-Time-Stamp: 2026-01-01T00:00:00Z\r\n\r\n\r\n"
}

// TestHiddenHeaderCannotForgeAnEntry: a stage stores content with a header
// block of its own making (raw protocol) on a subject it writes, then
// direct-gets it naming an owned key as reply subject. The stored entry's
// header block is the attacker's, a blank line, then the server's relay
// markings; nats.go reads only up to the blank line, so without a check
// of the whole block the entry reads as the owner's, marker, stream and
// subject all in order. The fetcher so forged bob's request state (the
// resolution every done event is checked against) from a lease, and
// host-1 an operator's selection from its own status key.
func TestHiddenHeaderCannotForgeAnEntry(t *testing.T) {
	connect := fleetUsers(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin := connect("admin")
	adminJS, _ := jetstream.New(admin)
	serverURL := admin.ConnectedUrl()

	t.Run("fetcher forges bob's request state", func(t *testing.T) {
		resolver := connect("resolver")
		requests := pipeline.NewRequests(resolver, nil)
		key := messages.RequestKey("bob", "hidden")
		if _, err := stage.PutOwned(ctx, resolver, messages.BucketRequests, key, pipeline.RequestsWriter,
			[]byte(`{"namespace":"bob","spec":{"distro":"ubuntu","version":"24.04","arch":"amd64"},"format":"raw","roles":["disk"]}`), nil); err != nil {
			t.Fatal(err)
		}
		forged := `{"namespace":"bob","spec":{"distro":"ubuntu","version":"24.04","arch":"amd64"},"format":"raw","roles":["disk"],"resolved_from":"forged"}`
		keySubject := "$KV." + messages.BucketRequests + "." + key
		lease := "$KV." + messages.BucketLeases + ".hidden"
		testutil.RawPublish(t, serverURL, "fetcher", "s3cret-for-tests", lease,
			hiddenHeader("KV_"+messages.BucketRequests, keySubject, pipeline.RequestsWriter), []byte(forged))
		fetcher := connect("fetcher")
		relayUntilStored(ctx, t, fetcher, adminJS, "KV_"+messages.BucketRequests, keySubject,
			"$JS.API.DIRECT.GET.KV_"+messages.BucketLeases+"."+lease, nil)
		// Its hidden revision cannot be walked back from: the state reads
		// as tampered (the resolver keeps what it has), never as forged.
		if st, _, err := requests.Load(ctx, key); (err == nil && st.ResolvedFrom == "forged") || (err != nil && !errors.Is(err, stage.ErrTampered)) {
			t.Errorf("the resolver reads %+v, %v after the fetcher's relay; want bob's genuine state or ErrTampered", st, err)
		}
	})

	// The operator's genuine selection, which no listing may lose.
	genuine, _ := fleet.Selection{Distro: "ubuntu", Version: "24.04", Arch: "amd64", Hosts: "*"}.Normalize(false)
	if err := openFleet(ctx, t, admin).PutSelection(ctx, genuine); err != nil {
		t.Fatal(err)
	}
	// loadFleet reads the fleet as the coordinator does: the forged
	// selection must not be in it, the genuine one must, and the
	// hand-made entry's key is listed as tampered.
	loadFleet := func(t *testing.T, forgedKey string) {
		t.Helper()
		st, skipped, err := openFleet(ctx, t, admin).Load(ctx)
		if err != nil {
			t.Fatalf("the listing fails: %v", err)
		}
		var ids []string
		for _, sel := range st.Selections {
			ids = append(ids, sel.ID())
		}
		if len(ids) != 1 || ids[0] != genuine.ID() {
			t.Errorf("selections %v after host-1's entry; want only the operator's %s", ids, genuine.ID())
		}
		if !slices.Contains(st.Tampered, forgedKey) {
			t.Errorf("tampered keys %v, want %s among them", st.Tampered, forgedKey)
		}
		t.Logf("skipped %q, tampered %q", skipped, st.Tampered)
	}

	t.Run("host-1 forges a selection", func(t *testing.T) {
		evil, _ := fleet.Selection{Distro: "ubuntu", Version: "20.04", Arch: "amd64", Hosts: "*", Serial: "20200101"}.Normalize(false)
		b, err := json.Marshal(evil)
		if err != nil {
			t.Fatal(err)
		}
		keySubject := "$KV." + fleetkv.Bucket + "." + fleetkv.SelectionKey(evil.ID())
		own := "$KV." + fleetkv.Bucket + "." + fleetkv.StatusKey("host-1", "hidden")
		testutil.RawPublish(t, serverURL, "converter_host-1", generatedPassword(t, "converter_host-1"), own,
			hiddenHeader("KV_"+fleetkv.Bucket, keySubject, fleetkv.Owner(fleetkv.SelectionKey(evil.ID()))), b)
		host1 := connect("converter_host-1")
		relayUntilStored(ctx, t, host1, adminJS, "KV_"+fleetkv.Bucket, keySubject,
			"$JS.API.DIRECT.GET.KV_"+fleetkv.Bucket, []byte(`{"last_by_subj":"`+own+`"}`))
		if _, _, err := stage.GetOwned(ctx, admin, fleetkv.Bucket, fleetkv.SelectionKey(evil.ID()), fleetkv.Owner(fleetkv.SelectionKey(evil.ID()))); !errors.Is(err, stage.ErrTampered) {
			t.Errorf("GetOwned of the relayed selection: %v, want ErrTampered", err)
		}
		loadFleet(t, fleetkv.SelectionKey(evil.ID()))
	})

	t.Run("host-1 forges a selection in its own status key", func(t *testing.T) {
		// No relay: the listing names each entry's key by the subject in
		// its headers, which a hand-made block can name.
		evil, _ := fleet.Selection{Distro: "ubuntu", Version: "18.04", Arch: "amd64", Hosts: "*", Serial: "20180101"}.Normalize(false)
		b, err := json.Marshal(evil)
		if err != nil {
			t.Fatal(err)
		}
		keySubject := "$KV." + fleetkv.Bucket + "." + fleetkv.SelectionKey(evil.ID())
		own := "$KV." + fleetkv.Bucket + "." + fleetkv.StatusKey("host-1", "own")
		testutil.RawPublish(t, serverURL, "converter_host-1", generatedPassword(t, "converter_host-1"), own,
			hiddenHeader("KV_"+fleetkv.Bucket, keySubject, fleetkv.Owner(fleetkv.SelectionKey(evil.ID()))), b)
		loadFleet(t, fleetkv.StatusKey("host-1", "own"))
	})
}

// relayUntilStored has the server answer get with body (a direct get nc may make)
// onto target, and waits until stream holds a message there.
func relayUntilStored(ctx context.Context, t *testing.T, nc *nats.Conn, adminJS jetstream.JetStream, stream, target, get string, body []byte) {
	t.Helper()
	s, err := adminJS.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := s.GetLastMsgForSubject(ctx, target)
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := nc.PublishRequest(get, target, body); err != nil {
			t.Fatal(err)
		}
		if err := nc.Flush(); err != nil {
			t.Fatal(err)
		}
		if m, err := s.GetLastMsgForSubject(ctx, target); err == nil && (before == nil || m.Sequence != before.Sequence) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("the relay never landed: the attack did not run")
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// generatedPassword is a converter host's generated password (fleetUsers).
func generatedPassword(t *testing.T, user string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fleetUsersDir, user+".password"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// TestHiddenHeaderCannotForgeAResult: the fetcher stores a forged prepared
// result for bob as a lease value under a hand-made header block — the
// collector's writer marker and the markings of a stored result, then a
// blank line — and direct-gets it naming bob's result subject as reply
// subject. The server's relay markings follow the blank line, where
// nats.go does not read: without a check of the whole block bob's client
// takes it, live or stored, as the collector's.
func TestHiddenHeaderCannotForgeAResult(t *testing.T) {
	connect := fleetUsers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	admin := connect("admin")
	adminJS, _ := jetstream.New(admin)
	const id = "hidden-result"
	subject := messages.ResultSubjectIn("bob", id)
	forged := messages.Result{Namespace: "bob", RequestID: id, Status: messages.ResultPrepared,
		Spec: image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}, Format: image.FormatRaw,
		ResolvedFrom: "the fetcher", CompletedAt: time.Now()}
	data, err := messages.Encode(messages.TypeResult, &forged)
	if err != nil {
		t.Fatal(err)
	}
	lease := "$KV." + messages.BucketLeases + ".hidden-result"
	testutil.RawPublish(t, admin.ConnectedUrl(), "fetcher", "s3cret-for-tests", lease,
		hiddenHeader(messages.StreamResults, subject, "collector"), data)
	relayUntilStored(ctx, t, connect("fetcher"), adminJS, messages.StreamResults, subject,
		"$JS.API.DIRECT.GET.KV_"+messages.BucketLeases+"."+lease, nil)
	bob, err := client.New(connect("bob"), client.WithNamespace("bob"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := bob.Prepare(ctx, client.Request{RequestID: id, Spec: forged.Spec, Format: image.FormatRaw})
	if err == nil && res.ResolvedFrom == "the fetcher" {
		t.Errorf("bob's client took the fetcher's forged result: %+v", res)
	} else {
		t.Logf("bob's prepare: %v", err)
	}
}
