package fleetkv

import (
	"context"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/fleet"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/testutil"
)

func TestStoreRoundTrip(t *testing.T) {
	_, _, js := testutil.EmbeddedJetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := Open(ctx, js, 1)
	if err != nil {
		t.Fatal(err)
	}
	empty, skipped, err := s.Load(ctx)
	if err != nil || len(skipped) != 0 || len(empty.Selections) != 0 || len(empty.Hosts) != 0 {
		t.Fatalf("empty bucket: %+v %v %v", empty, skipped, err)
	}
	sel, err := fleet.Selection{Distro: "ubuntu", Version: "24.04", Arch: "amd64", Hosts: "host-*"}.Normalize(false)
	if err != nil {
		t.Fatal(err)
	}
	gone, _ := fleet.Selection{Distro: "debian", Version: "12", Arch: "amd64"}.Normalize(false)
	for _, x := range []fleet.Selection{sel, gone} {
		if err := s.PutSelection(ctx, x); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.DeleteSelection(ctx, gone.ID()); err != nil {
		t.Fatal(err)
	}
	if err := s.PutBuild(ctx, sel.ID(), fleet.Build{Serial: "s1"}); err != nil {
		t.Fatal(err)
	}
	if err := s.Announce(ctx, "host-1", time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := s.PutStatus(ctx, "host-1", sel.ID(), fleet.Status{Serial: "s1", State: fleet.StateReady}); err != nil {
		t.Fatal(err)
	}
	plan := fleet.Plan{Host: "host-1", Desired: []fleet.Desired{{Selection: sel.ID(), Format: sel.Format}}}
	changed := make(chan struct{}, 1)
	sub, err := s.WatchPlan("host-1", func() { changed <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe() //nolint:errcheck
	if err := s.PutPlan(ctx, plan); err != nil {
		t.Fatal(err)
	}
	select {
	case <-changed:
	case <-ctx.Done():
		t.Fatal("plan change not seen")
	}
	if got, err := s.Plan(ctx, "host-1"); err != nil || !got.Equal(plan) {
		t.Fatalf("plan %+v %v", got, err)
	}
	if got, err := s.Plan(ctx, "host-2"); err != nil || len(got.Desired) != 0 {
		t.Fatalf("missing plan %+v %v", got, err)
	}
	// An entry that does not decode is skipped, not fatal.
	if _, err := stage.PutOwned(ctx, s.nc, Bucket, StatusKey("host-1", "bad"), Owner(StatusKey("host-1", "bad")), []byte("{"), nil); err != nil {
		t.Fatal(err)
	}
	st, skipped, err := s.Load(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Selections) != 1 || st.Selections[0] != sel {
		t.Errorf("selections %+v", st.Selections)
	}
	if st.Builds[sel.ID()].Serial != "s1" || st.Status["host-1"][sel.ID()].State != fleet.StateReady ||
		len(st.Hosts) != 1 || !st.Plans["host-1"].Equal(plan) {
		t.Errorf("state %+v", st)
	}
	if len(skipped) != 1 {
		t.Errorf("skipped %v, want the bad status", skipped)
	}
}
