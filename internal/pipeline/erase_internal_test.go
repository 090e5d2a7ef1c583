package pipeline

import (
	"context"
	"log/slog"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/fleet"
	"github.com/vmprep/vmprep/internal/fleetkv"
	"github.com/vmprep/vmprep/internal/testutil"
)

// TestTamperedKeysKeepThePlans: an attacker floods a fleet key with the
// server's answers to $JS.API.INFO (its subject named as reply subject)
// until none of its owner's entries is left. What the key held is then
// unknown, not gone: a host's plan must still name the selection (a plan
// without it would make the host free its builds) — the coordinator plans
// nothing while a selection is tampered, writes a flooded plan (its own)
// again, and plans on without a build, a host's announcement or status.
func TestTamperedKeysKeepThePlans(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		flood func(sel fleet.Selection) string // the key flooded
	}{
		{"selection", func(sel fleet.Selection) string { return fleetkv.SelectionKey(sel.ID()) }},
		{"plan", func(fleet.Selection) string { return fleetkv.PlanKey("host-1") }},
		// Not blocked on: they cannot take a selection out of a plan.
		{"build", func(sel fleet.Selection) string { return fleetkv.BuildKey(sel.ID()) }},
		{"host", func(fleet.Selection) string { return fleetkv.HostKey("host-1") }},
		{"status", func(sel fleet.Selection) string { return fleetkv.StatusKey("host-1", sel.ID()) }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			_, nc, js := testutil.EmbeddedJetStream(t)
			st, err := fleetkv.Open(ctx, js, 1)
			if err != nil {
				t.Fatal(err)
			}
			sel, _ := fleet.Selection{Distro: "ubuntu", Version: "24.04", Arch: "amd64", Hosts: "*"}.Normalize(false)
			if err := st.PutSelection(ctx, sel); err != nil {
				t.Fatal(err)
			}
			if err := st.PutBuild(ctx, sel.ID(), fleet.Build{Serial: "20240101"}); err != nil {
				t.Fatal(err)
			}
			if err := st.Announce(ctx, "host-1", time.Now()); err != nil {
				t.Fatal(err)
			}
			if err := st.PutStatus(ctx, "host-1", sel.ID(), fleet.Status{Serial: "20240101", State: fleet.StateReady}); err != nil {
				t.Fatal(err)
			}
			c := &FleetCoordinator{Fleet: st, Conn: nc, Logger: slog.New(slog.DiscardHandler)}
			names := func() bool {
				p, err := st.Plan(ctx, "host-1")
				if err != nil {
					t.Fatalf("host-1 reads its plan: %v", err)
				}
				return len(p.Desired) == 1 && p.Desired[0].Selection == sel.ID()
			}
			c.replan(ctx)
			if !names() {
				t.Fatal("the first plan does not name the selection: the test shows nothing")
			}
			testutil.EraseByReply(t, nc, nc, "$KV."+fleetkv.Bucket+"."+tc.flood(sel), fleetkv.History)
			c.replan(ctx)
			if !names() {
				t.Errorf("after %s was flooded, host-1's plan no longer names the selection: host-1 would free its builds", tc.flood(sel))
			}
		})
	}
}
