package main

import (
	"context"
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

// TestReplyRelayErasures: alice (a client with no right to any of these
// buckets) overwrites an owner's key-value entry with the server's answer
// to $JS.API.INFO, naming the key's subject as reply subject: once (an
// erasure), and as often as the bucket keeps entries per key (a flood).
// After an erasure every reader still reads what the owner last wrote,
// and the owner's conditional write (the collector's compare-and-set)
// still succeeds; after a flood the read is ErrTampered — never "not
// found", which would drop a selection, free a host's builds or restart
// bob's request — and the fleet listing reports the key.
func TestReplyRelayErasures(t *testing.T) {
	connect := fleetUsers(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	adminNC := connect("admin")
	admin := openFleet(ctx, t, adminNC)
	resolverNC := connect("resolver")
	resolver := openFleet(ctx, t, resolverNC)
	host2NC := connect("converter_host-2")
	host2 := openFleet(ctx, t, host2NC)
	verifierNC := connect("verifier")
	alice := connect("alice")
	resolverJS, _ := jetstream.New(resolverNC)
	requestsKV, err := resolverJS.KeyValue(ctx, messages.BucketRequests)
	if err != nil {
		t.Fatal(err)
	}
	requests := pipeline.NewRequests(resolverNC, requestsKV)

	kvSubject := func(bucket, key string) string { return "$KV." + bucket + "." + key }
	selection := func(version string) fleet.Selection {
		s, _ := fleet.Selection{Distro: "ubuntu", Version: version, Arch: "amd64", Hosts: "*"}.Normalize(false)
		return s
	}
	bobState := []byte(`{"namespace":"bob","spec":{"distro":"ubuntu","version":"24.04","arch":"amd64"},"format":"raw","roles":["disk"],"resolved_from":"genuine"}`)
	record := []byte(`{"nuid":"genuine","size":1}`)

	for _, tc := range []struct {
		name     string
		observer *nats.Conn // may direct-get the key
		subject  string
		write    func(t *testing.T)       // the owner's entry
		erasures int                      // alice's overwrites
		check    func(t *testing.T) error // nil: as expected
	}{
		{
			name: "selection erased", observer: adminNC, subject: kvSubject(fleetkv.Bucket, fleetkv.SelectionKey(selection("22.04").ID())), erasures: 1,
			write: func(t *testing.T) {
				if err := admin.PutSelection(ctx, selection("22.04")); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T) error {
				st, skipped, err := resolver.Load(ctx)
				if err != nil {
					return err
				}
				if len(st.Tampered) != 0 || !slices.Contains(st.Selections, selection("22.04")) {
					return errors.New("the resolver lost the operator's selection: skipped " + strings.Join(skipped, "; "))
				}
				return nil
			},
		},
		{
			name: "selection flooded", observer: adminNC, subject: kvSubject(fleetkv.Bucket, fleetkv.SelectionKey(selection("20.04").ID())), erasures: fleetkv.History,
			write: func(t *testing.T) {
				if err := admin.PutSelection(ctx, selection("20.04")); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T) error {
				st, _, err := resolver.Load(ctx)
				if err != nil {
					return err
				}
				key := fleetkv.SelectionKey(selection("20.04").ID())
				for _, k := range st.Tampered {
					if k == key {
						return nil
					}
				}
				return errors.New("the flooded selection is not reported tampered: it would read as removed")
			},
		},
		{
			name: "plan erased", observer: host2NC, subject: kvSubject(fleetkv.Bucket, fleetkv.PlanKey("host-2")), erasures: 1,
			write: func(t *testing.T) {
				if err := resolver.PutPlan(ctx, hostPlan("host-2", selection("24.04"))); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T) error {
				p, err := host2.Plan(ctx, "host-2")
				if err != nil {
					return err
				}
				if !p.Equal(hostPlan("host-2", selection("24.04"))) {
					return errors.New("host-2 reads another plan than the resolver's")
				}
				return nil
			},
		},
		{
			name: "plan flooded", observer: host2NC, subject: kvSubject(fleetkv.Bucket, fleetkv.PlanKey("host-2")), erasures: fleetkv.History,
			write: func(t *testing.T) {
				if err := resolver.PutPlan(ctx, hostPlan("host-2", selection("24.04"))); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T) error {
				if _, err := host2.Plan(ctx, "host-2"); !errors.Is(err, fleetkv.ErrTampered) {
					return errors.Join(errors.New("want ErrTampered (the host keeps what it holds)"), err)
				}
				return nil
			},
		},
		{
			name: "bob's request state erased", observer: resolverNC, subject: kvSubject(messages.BucketRequests, messages.RequestKey("bob", "erased")), erasures: 1,
			write: func(t *testing.T) {
				if _, err := stage.PutOwned(ctx, resolverNC, messages.BucketRequests, messages.RequestKey("bob", "erased"), pipeline.RequestsWriter, bobState, nil); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T) error {
				key := messages.RequestKey("bob", "erased")
				st, rev, err := requests.Load(ctx, key)
				if err != nil {
					return err
				}
				if st.ResolvedFrom != "genuine" {
					return errors.New("the collector reads another state than the resolver's")
				}
				// The collector's compare-and-set over the key's last revision.
				return requests.Save(ctx, key, st, rev)
			},
		},
		{
			name: "bob's request state flooded", observer: resolverNC, subject: kvSubject(messages.BucketRequests, messages.RequestKey("bob", "flooded")), erasures: stage.OwnedHistory,
			write: func(t *testing.T) {
				if _, err := stage.PutOwned(ctx, resolverNC, messages.BucketRequests, messages.RequestKey("bob", "flooded"), pipeline.RequestsWriter, bobState, nil); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T) error {
				if _, _, err := requests.Load(ctx, messages.RequestKey("bob", "flooded")); !errors.Is(err, stage.ErrTampered) {
					return errors.Join(errors.New("want ErrTampered (the request waits, it does not start afresh)"), err)
				}
				return nil
			},
		},
		{
			name: "verified record erased", observer: verifierNC, subject: kvSubject(messages.BucketVerified, "sha256.erased"), erasures: 1,
			write: func(t *testing.T) {
				if _, err := stage.PutOwned(ctx, verifierNC, messages.BucketVerified, "sha256.erased", pipeline.VerifiedWriter, record, nil); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T) error {
				v, _, err := stage.GetOwned(ctx, verifierNC, messages.BucketVerified, "sha256.erased", pipeline.VerifiedWriter)
				if err != nil {
					return err
				}
				if string(v) != string(record) {
					return errors.New("the verifier reads another record than its own: " + string(v))
				}
				return nil
			},
		},
		{
			name: "verified record flooded", observer: verifierNC, subject: kvSubject(messages.BucketVerified, "sha256.flooded"), erasures: stage.OwnedHistory,
			write: func(t *testing.T) {
				if _, err := stage.PutOwned(ctx, verifierNC, messages.BucketVerified, "sha256.flooded", pipeline.VerifiedWriter, record, nil); err != nil {
					t.Fatal(err)
				}
			},
			check: func(t *testing.T) error {
				if _, _, err := stage.GetOwned(ctx, verifierNC, messages.BucketVerified, "sha256.flooded", pipeline.VerifiedWriter); !errors.Is(err, stage.ErrTampered) {
					return errors.Join(errors.New("want ErrTampered"), err)
				}
				return nil
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tc.write(t)
			testutil.EraseByReply(t, alice, tc.observer, tc.subject, tc.erasures)
			if err := tc.check(t); err != nil {
				t.Errorf("after %d of alice's overwrites of %s: %v", tc.erasures, tc.subject, err)
			}
		})
	}
}

func hostPlan(host string, sel fleet.Selection) fleet.Plan {
	return fleet.Plan{Host: host, Desired: []fleet.Desired{{Selection: sel.ID(), Spec: sel.Spec(), Format: sel.Format}}}
}
