package main

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/fleet"
	"github.com/vmprep/vmprep/internal/fleetkv"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// TestPulledMessageCannotForgeAnEntry: a pull request's reply subject is
// not checked either, and the server delivers the consumer's messages
// there with the headers their publisher chose. alice publishes a
// corruption report carrying the operator's writer marker and a
// selection as its body; the verifier (which pulls those reports) pulls
// it with a selection key's subject as reply subject. nats-server
// delivers a consumer's message under its own subject (the reply subject
// only routes it), so the bucket stores it as vmprep.asset.corrupt, not on
// the key: this guards that, which owned reads (stage.Owned) rely on — a
// marker the server stored on a key without its relay headers would be
// taken for the owner's. The fleet must not take it for the selection.
func TestPulledMessageCannotForgeAnEntry(t *testing.T) {
	connect := fleetUsers(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	evil, _ := fleet.Selection{Distro: "ubuntu", Version: "20.04", Arch: "amd64", Hosts: "*", Serial: "20200101"}.Normalize(false)
	body, err := json.Marshal(evil)
	if err != nil {
		t.Fatal(err)
	}
	alice := connect("alice")
	m := nats.NewMsg(messages.SubjectCorrupt)
	m.Header.Set(stage.HeaderWriter, fleetkv.Owner(fleetkv.SelectionKey(evil.ID())))
	m.Data = body
	if _, err := alice.RequestMsg(m, 5*time.Second); err != nil {
		t.Fatalf("alice reports: %v", err)
	}
	verifier := connect("verifier")
	key := "$KV." + fleetkv.Bucket + "." + fleetkv.SelectionKey(evil.ID())
	if err := verifier.PublishRequest("$JS.API.CONSUMER.MSG.NEXT."+messages.StreamWork+".healer", key, []byte(`{"batch":1,"expires":1000000000}`)); err != nil {
		t.Fatal(err)
	}
	if err := verifier.Flush(); err != nil {
		t.Fatal(err)
	}
	admin := connect("admin")
	adminJS, _ := jetstream.New(admin)
	s, err := adminJS.Stream(ctx, "KV_"+fleetkv.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	// Wait for the pull to be answered: the report leaves the consumer's
	// pending count (delivered, unacknowledged).
	cons, err := adminJS.Consumer(ctx, messages.StreamWork, "healer")
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		info, err := cons.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if info.NumAckPending > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the verifier's pull was never answered: the attack did not run")
		}
		time.Sleep(20 * time.Millisecond)
	}
	info, err := s.Info(ctx, jetstream.WithSubjectFilter(">"))
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("fleet bucket after the pull: %d messages, subjects %v", info.State.Msgs, info.State.Subjects)
	if _, ok := info.State.Subjects[key]; ok {
		t.Errorf("the pulled report was stored on %s", key)
	}
	st, skipped, err := openFleet(ctx, t, admin).Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Selections) != 0 {
		t.Errorf("a pulled report forged the operator's selection: %+v (skipped %q)", st.Selections, skipped)
	}
}

// TestHeaderlessRelayForgesAResult: the verifier writes a forged prepared
// result for bob as object metadata (it may write $O.vmprep.M.>) and
// direct-gets it with "no_hdr" — the payload alone, none of the server's
// relay markings — naming bob's result subject as reply subject. The
// results stream stores it, and a direct get of it has exactly one
// Nats-Stream and Nats-Subject, as the collector's own; live, it has
// none, as the collector's own. bob's client must not take it: it has no
// collector's marker (messages.ResultsWriter), so the client refuses it
// and says so when it stops waiting.
func TestHeaderlessRelayForgesAResult(t *testing.T) {
	connect := fleetUsers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	const id = "forged-result"
	forged := messages.Result{Namespace: "bob", RequestID: id, Status: messages.ResultPrepared,
		Spec: image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}, Format: image.FormatRaw,
		ResolvedFrom: "the verifier", CompletedAt: time.Now()}
	data, err := messages.Encode(messages.TypeResult, &forged)
	if err != nil {
		t.Fatal(err)
	}
	verifier := connect("verifier")
	if _, err := verifier.Request("$O.vmprep.M.forge", data, 5*time.Second); err != nil {
		t.Fatalf("the verifier writes object metadata: %v", err)
	}
	// The relay is stored before bob asks: his client reads it back.
	admin := connect("admin")
	adminJS, _ := jetstream.New(admin)
	results, err := adminJS.Stream(ctx, messages.StreamResults)
	if err != nil {
		t.Fatal(err)
	}
	before, err := results.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := verifier.PublishRequest("$JS.API.DIRECT.GET.OBJ_vmprep", messages.ResultSubjectIn("bob", id),
		[]byte(`{"last_by_subj":"$O.vmprep.M.forge","no_hdr":true}`)); err != nil {
		t.Fatal(err)
	}
	if err := verifier.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		info, err := results.Info(ctx)
		if err != nil {
			t.Fatalf("the relay was never stored (the attack did not run): %v", err)
		}
		if info.State.LastSeq > before.State.LastSeq {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	bob, err := client.New(connect("bob"), client.WithNamespace("bob"))
	if err != nil {
		t.Fatal(err)
	}
	pctx, pcancel := context.WithTimeout(ctx, 3*time.Second)
	defer pcancel()
	res, err := bob.Prepare(pctx, client.Request{RequestID: id, Spec: forged.Spec, Format: image.FormatRaw})
	if err == nil {
		t.Fatalf("bob's client took the verifier's forged result: %+v", res)
	}
	if !errors.Is(err, client.ErrResultUnmarked) || !strings.Contains(err.Error(), messages.ResultSubjectIn("bob", id)) {
		t.Errorf("bob's prepare: %v; want it to name the unmarked result on %s", err, messages.ResultSubjectIn("bob", id))
	}
	t.Logf("bob's prepare: %v", err)
}
