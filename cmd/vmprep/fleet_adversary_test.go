package main

import (
	"context"
	"encoding/json"
	"errors"
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
	"github.com/vmprep/vmprep/pkg/messages"
)

// TestRollupCannotWipeABucket: a JetStream publish with the header
// "Nats-Rollup: all" purges the whole stream it lands in (keeping that one
// message), and permissions see only the subject. Every party that may
// write one key of a bucket attacks the whole bucket: a converter host
// through its own announcement key (every selection, build and plan of the
// fleet) and its liveness key, the fetcher through a lease, the verifier
// through a verified record. Each bucket must still hold what the operator
// put there.
func TestRollupCannotWipeABucket(t *testing.T) {
	connect := fleetUsers(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	admin := connect("admin")
	adminJS, _ := jetstream.New(admin)
	for _, tc := range []struct {
		attacker, bucket, key string
	}{
		{"converter_host-1", fleetkv.Bucket, "host.host-1"},
		{"converter_host-1", "VMPREP_PROCESSES", "converter.host-1.1"},
		{"fetcher", "VMPREP_LEASES", "rollup"},
		{"verifier", "VMPREP_VERIFIED", "rollup"},
	} {
		t.Run(tc.attacker+" "+tc.bucket, func(t *testing.T) {
			kv, err := adminJS.KeyValue(ctx, tc.bucket)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := kv.Put(ctx, "kept.by.admin", []byte("x")); err != nil {
				t.Fatal(err)
			}
			nc := connect(tc.attacker)
			m := nats.NewMsg("$KV." + tc.bucket + "." + tc.key)
			m.Header.Set(jetstream.MsgRollup, jetstream.MsgRollupAll)
			m.Data = []byte("{}")
			reply, err := nc.RequestMsg(m, 5*time.Second)
			if err != nil {
				t.Fatalf("publish: %v", err)
			}
			t.Logf("%s's rollup of %s: %s", tc.attacker, tc.bucket, reply.Data)
			if _, err := kv.Get(ctx, "kept.by.admin"); err != nil {
				t.Errorf("%s wiped bucket %s through key %s: admin's key: %v", tc.attacker, tc.bucket, tc.key, err)
			}
		})
	}
}

// TestHostCannotRelayFleetEntries: a request's reply subject is not
// checked against the requester's rights, and a key-value bucket stores
// whatever is published on its subjects, the server's replies included. A
// converter host writes a selection and another host's plan as values of
// its own status keys (which it may write), then direct-gets them with the
// reply subject of a selection key and of host-2's plan key: the server
// publishes them there, and they are stored as if the operator and the
// resolver had written them. The fleet must not take them.
func TestHostCannotRelayFleetEntries(t *testing.T) {
	connect := fleetUsers(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	host1 := connect("converter_host-1")
	evil, _ := fleet.Selection{Distro: "ubuntu", Version: "20.04", Arch: "amd64", Hosts: "*", Serial: "20200101"}.Normalize(false)
	plan := fleet.Plan{Host: "host-2"}
	for _, relay := range []struct {
		key string
		v   any
	}{
		{fleetkv.SelectionKey(evil.ID()), evil},
		{fleetkv.PlanKey("host-2"), plan},
	} {
		b, err := json.Marshal(relay.v)
		if err != nil {
			t.Fatal(err)
		}
		own := "$KV." + fleetkv.Bucket + "." + fleetkv.StatusKey("host-1", "relay")
		if _, err := host1.Request(own, b, 5*time.Second); err != nil {
			t.Fatalf("host-1 writes its own status key: %v", err)
		}
		body := `{"last_by_subj":"` + own + `"}`
		if err := host1.PublishRequest("$JS.API.DIRECT.GET.KV_"+fleetkv.Bucket, "$KV."+fleetkv.Bucket+"."+relay.key, []byte(body)); err != nil {
			t.Fatal(err)
		}
		if err := host1.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	admin := connect("admin")
	adminJS, _ := jetstream.New(admin)
	kv, err := adminJS.KeyValue(ctx, fleetkv.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	// The relay lands asynchronously: wait for both keys to hold it.
	for _, key := range []string{fleetkv.SelectionKey(evil.ID()), fleetkv.PlanKey("host-2")} {
		deadline := time.Now().Add(30 * time.Second)
		for {
			if _, err := kv.Get(ctx, key); err == nil {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("the relay onto %s never landed: the attack did not run", key)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	st := openFleet(ctx, t, admin)
	loaded, skipped, err := st.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(loaded.Selections) != 0 {
		t.Errorf("a host relayed a selection into the fleet: %+v", loaded.Selections)
	}
	if _, ok := loaded.Plans["host-2"]; ok {
		t.Errorf("host-1 relayed a plan for host-2 into the fleet")
	}
	for _, key := range []string{fleetkv.SelectionKey(evil.ID()), fleetkv.PlanKey("host-2")} {
		if !slices.ContainsFunc(skipped, func(s string) bool { return strings.HasPrefix(s, key+": ") }) {
			t.Errorf("loading the fleet did not report the relayed %s: skipped %q", key, skipped)
		}
	}
	st2 := openFleet(ctx, t, connect("converter_host-2"))
	if p, err := st2.Plan(ctx, "host-2"); !errors.Is(err, fleetkv.ErrRelayed) {
		t.Errorf("host-2 read the plan host-1 relayed: %+v, %v; want %v", p, err, fleetkv.ErrRelayed)
	}
}

// TestErasedPlanFreesNothing: alice overwrites host-2's plan with the
// server's answer to $JS.API.INFO (see TestReplyRelayCannotEraseAKey).
// host-2 must not read it as an empty plan, which would unwant every
// selection and free every build it holds: it reads the plan the resolver
// last wrote, and once the key is flooded past its history an error
// (ErrTampered), keeping what it holds.
func TestErasedPlanFreesNothing(t *testing.T) {
	connect := fleetUsers(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resolver := openFleet(ctx, t, connect("resolver"))
	sel, _ := fleet.Selection{Distro: "ubuntu", Version: "24.04", Arch: "amd64", Hosts: "*"}.Normalize(false)
	plan := fleet.Plan{Host: "host-2", Desired: []fleet.Desired{{Selection: sel.ID(), Spec: sel.Spec(), Format: sel.Format}}}
	if err := resolver.PutPlan(ctx, plan); err != nil {
		t.Fatal(err)
	}
	host2NC := connect("converter_host-2")
	host2 := openFleet(ctx, t, host2NC)
	subject := "$KV." + fleetkv.Bucket + "." + fleetkv.PlanKey("host-2")
	testutil.EraseByReply(t, connect("alice"), host2NC, subject, 1)
	if p, err := host2.Plan(ctx, "host-2"); err != nil || !p.Equal(plan) {
		t.Errorf("host-2 reads its erased plan as %+v, %v; want the resolver's %+v", p, err, plan)
	}
	testutil.EraseByReply(t, connect("alice"), host2NC, subject, fleetkv.History)
	if p, err := host2.Plan(ctx, "host-2"); !errors.Is(err, fleetkv.ErrTampered) {
		t.Errorf("host-2 reads its flooded plan as %+v, %v; want %v", p, err, fleetkv.ErrTampered)
	}
}

// TestReplyRelayCannotEraseAKey: every user may call $JS.API.INFO, and the
// server publishes its answer onto whatever reply subject the caller
// names, a key-value bucket storing it like any put. alice (a client, no
// right to the fleet bucket at all) names the subject of the operator's
// selection: the bucket's last entry of that key becomes the server's
// account-info answer, and the selection is gone from the fleet (its
// hosts would unwant it and free its builds). The same erases any key of
// any bucket (bob's request state, a verified record). Permissions cannot
// see a reply subject: the fleet reads each key as the last entry its
// owner wrote (stage.GetOwned), and keeps the selection.
func TestReplyRelayCannotEraseAKey(t *testing.T) {
	connect := fleetUsers(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	adminNC := connect("admin")
	admin := openFleet(ctx, t, adminNC)
	sel, _ := fleet.Selection{Distro: "ubuntu", Version: "24.04", Arch: "amd64", Hosts: "*"}.Normalize(false)
	if err := admin.PutSelection(ctx, sel); err != nil {
		t.Fatal(err)
	}
	alice := connect("alice")
	testutil.EraseByReply(t, alice, adminNC, "$KV."+fleetkv.Bucket+"."+fleetkv.SelectionKey(sel.ID()), 1)
	st, skipped, err := admin.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Selections) != 1 {
		t.Errorf("alice erased the operator's selection by a reply subject: selections %v, skipped %q", st.Selections, skipped)
	}
}

// TestFetcherCannotRelayRequestState: the collector checks every done
// event against the resolution recorded in bob's request state, which
// only the resolver writes. A compromised fetcher writes a forged state
// (a resolution naming its own disk's digest) as a lease value and
// direct-gets it with the subject of bob's request state as the reply
// subject: the bucket stores it. Read as bob's state, the genuine
// verifier's report of the fetcher's object would match it and bob's
// result would name the attacker's disk. The resolver must read bob's
// genuine state, the resolver's last entry — also when the relay asked
// for the payload alone (no_hdr: no relay markings on the stored entry),
// as the verifier can from an object's metadata it writes.
func TestFetcherCannotRelayRequestState(t *testing.T) {
	connect := fleetUsers(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	resolverJS, _ := jetstream.New(connect("resolver"))
	requestsKV, err := resolverJS.KeyValue(ctx, messages.BucketRequests)
	if err != nil {
		t.Fatal(err)
	}
	requests := pipeline.NewRequests(resolverJS.Conn(), requestsKV)
	forged := `{"namespace":"bob","spec":{"distro":"ubuntu","version":"24.04","arch":"amd64"},"format":"raw","roles":["disk"],"resolved_from":"forged"}`
	for _, tc := range []struct {
		user, stored string // who writes the forged state, where
		get          string // the direct get's subject and body
		body         []byte
		id           string
	}{
		{"fetcher", "$KV." + messages.BucketLeases + ".relay",
			"$JS.API.DIRECT.GET.KV_" + messages.BucketLeases + ".$KV." + messages.BucketLeases + ".relay", nil, "lease"},
		// The payload alone: the answer carries no relay markings at all.
		{"verifier", "$O.vmprep.M.relay",
			"$JS.API.DIRECT.GET.OBJ_vmprep", []byte(`{"last_by_subj":"$O.vmprep.M.relay","no_hdr":true}`), "meta-no-headers"},
	} {
		t.Run(tc.user+" "+tc.id, func(t *testing.T) {
			stageNC := connect(tc.user)
			key := messages.RequestKey("bob", tc.id)
			if _, err := stage.PutOwned(ctx, resolverJS.Conn(), messages.BucketRequests, key, pipeline.RequestsWriter,
				[]byte(`{"namespace":"bob","spec":{"distro":"ubuntu","version":"24.04","arch":"amd64"},"format":"raw","roles":["disk"]}`), nil); err != nil {
				t.Fatal(err)
			}
			if _, _, err := requests.Load(ctx, key); err != nil {
				t.Fatalf("the resolver reads bob's genuine state: %v", err)
			}
			if _, err := stageNC.Request(tc.stored, []byte(forged), 5*time.Second); err != nil {
				t.Fatalf("the %s writes %s: %v", tc.user, tc.stored, err)
			}
			if err := stageNC.PublishRequest(tc.get, "$KV."+messages.BucketRequests+"."+key, tc.body); err != nil {
				t.Fatal(err)
			}
			if err := stageNC.Flush(); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(30 * time.Second)
			for {
				e, err := requestsKV.Get(ctx, key)
				if err == nil && strings.Contains(string(e.Value()), "forged") {
					break
				}
				if time.Now().After(deadline) {
					t.Fatal("the relayed state never landed: the attack did not run")
				}
				time.Sleep(20 * time.Millisecond)
			}
			if st, _, err := requests.Load(ctx, key); err != nil || st.ResolvedFrom == "forged" {
				t.Errorf("the resolver reads %+v, %v after the %s's relay; want bob's genuine state", st, err, tc.user)
			}
		})
	}
}

// openFleet opens the fleet bucket as nc's user.
func openFleet(ctx context.Context, t *testing.T, nc *nats.Conn) *fleetkv.Store {
	t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	st, err := fleetkv.Open(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestHeaderlessRelayCannotForge: a direct get may ask for the payload
// alone ("no_hdr"); the server's answer then carries none of the markings
// (Nats-Stream, Nats-Subject) by which a relay is told (messages.Relayed).
// host-1 writes a selection as its own status value and direct-gets it so,
// naming a selection key as reply subject: the bucket stores the
// selection there with no marking at all. Only the writer marker
// (stage.HeaderWriter) tells it is not the operator's.
func TestHeaderlessRelayCannotForge(t *testing.T) {
	connect := fleetUsers(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	host1 := connect("converter_host-1")
	evil, _ := fleet.Selection{Distro: "ubuntu", Version: "20.04", Arch: "amd64", Hosts: "*", Serial: "20200101"}.Normalize(false)
	b, err := json.Marshal(evil)
	if err != nil {
		t.Fatal(err)
	}
	own := "$KV." + fleetkv.Bucket + "." + fleetkv.StatusKey("host-1", "relay")
	if _, err := host1.Request(own, b, 5*time.Second); err != nil {
		t.Fatalf("host-1 writes its own status key: %v", err)
	}
	key := "$KV." + fleetkv.Bucket + "." + fleetkv.SelectionKey(evil.ID())
	if err := host1.PublishRequest("$JS.API.DIRECT.GET.KV_"+fleetkv.Bucket, key, []byte(`{"last_by_subj":"`+own+`","no_hdr":true}`)); err != nil {
		t.Fatal(err)
	}
	if err := host1.Flush(); err != nil {
		t.Fatal(err)
	}
	admin := connect("admin")
	adminJS, _ := jetstream.New(admin)
	kv, err := adminJS.KeyValue(ctx, fleetkv.Bucket)
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		if _, err := kv.Get(ctx, fleetkv.SelectionKey(evil.ID())); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the relay never landed: the attack did not run")
		}
		time.Sleep(20 * time.Millisecond)
	}
	st, skipped, err := openFleet(ctx, t, admin).Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Selections) != 0 {
		t.Errorf("host-1 forged a selection by a header-less relay: %+v", st.Selections)
	}
	t.Logf("skipped: %q", skipped)
}
