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
	st, err := fleetkv.Open(ctx, adminJS, 1)
	if err != nil {
		t.Fatal(err)
	}
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
	host2 := connect("converter_host-2")
	host2JS, _ := jetstream.New(host2)
	st2, err := fleetkv.Open(ctx, host2JS, 1)
	if err != nil {
		t.Fatal(err)
	}
	if p, err := st2.Plan(ctx, "host-2"); !errors.Is(err, fleetkv.ErrRelayed) {
		t.Errorf("host-2 read the plan host-1 relayed: %+v, %v; want %v", p, err, fleetkv.ErrRelayed)
	}
}
