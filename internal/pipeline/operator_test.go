package pipeline_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/natsembed"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/pkg/messages"
)

// With least-privilege users the operator creates, the stages bind: a user
// that may not create a missing stream or consumer is told so at once (not
// left waiting), binds once the operator's setup made them, and the
// operator's setup keeps what the operator changed.
func TestSetupByTheOperator(t *testing.T) {
	t.Parallel()
	admin, stageJS := adminAndStage(t, "$JS.API.INFO", "$JS.API.STREAM.INFO.>", "$JS.API.CONSUMER.INFO.>")
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cfg := pipeline.SetupConfig{ObjectBucket: "b"}

	// Before setup: said at once, not waited on until ctx ends.
	_, err := pipeline.WaitForSetup(ctx, stageJS, cfg)
	if !errors.Is(err, stage.ErrCreateDenied) || ctx.Err() != nil {
		t.Fatalf("stage user before setup: %v (ctx %v), want %v", err, ctx.Err(), stage.ErrCreateDenied)
	}
	if want := "stream VMPREP_WORK missing and this user may not create it: run `vmprep setup` as an admin user"; !strings.Contains(err.Error(), want) {
		t.Errorf("stage user before setup: %q, want it to say %q", err, want)
	}

	// The operator sets up; the operator then keeps results a day and
	// gives the consumers a longer ack wait (setup --ack-wait); a second
	// setup without one keeps both.
	for _, ackWait := range []time.Duration{45 * time.Second, 0} {
		if _, err := pipeline.Setup(ctx, admin, cfg); err != nil {
			t.Fatal(err)
		}
		if err := pipeline.SetupConsumers(ctx, admin, ackWait, nil, nil); err != nil {
			t.Fatal(err)
		}
		s, err := admin.Stream(ctx, messages.StreamResults)
		if err != nil {
			t.Fatal(err)
		}
		sc := s.CachedInfo().Config
		sc.MaxAge = 24 * time.Hour
		if _, err := admin.UpdateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	if s, _ := admin.Stream(ctx, messages.StreamResults); s.CachedInfo().Config.MaxAge != 24*time.Hour {
		t.Errorf("setup reverted the operator's max age: %s", s.CachedInfo().Config.MaxAge)
	}
	if c, _ := admin.Consumer(ctx, messages.StreamWork, messages.StageFetcher); c.CachedInfo().Config.AckWait != 45*time.Second {
		t.Errorf("setup reverted the operator's ack wait: %s", c.CachedInfo().Config.AckWait)
	}

	// After setup the stage user binds: streams, buckets, its consumer.
	if _, err := pipeline.WaitForSetup(ctx, stageJS, cfg); err != nil {
		t.Fatalf("stage user after setup: %v", err)
	}
	noop := func(context.Context, stage.Message) ([]stage.Event, error) { return nil, nil }
	r, err := stage.New(ctx, stageJS, messages.StreamWork, messages.StageFetcher, messages.SubjectFetch, noop)
	if err != nil {
		t.Fatalf("stage user binding the fetcher consumer: %v", err)
	}
	_ = r

	// A consumer the operator removed: said at once.
	if err := admin.DeleteConsumer(ctx, messages.StreamWork, messages.StageVerifier); err != nil {
		t.Fatal(err)
	}
	_, err = stage.New(ctx, stageJS, messages.StreamWork, messages.StageVerifier, messages.SubjectVerify, noop)
	if !errors.Is(err, stage.ErrCreateDenied) || !strings.Contains(err.Error(), "consumer verifier of stream VMPREP_WORK missing and this user may not create it") {
		t.Errorf("stage user binding a missing consumer: %v", err)
	}
}

// adminAndStage starts a server with an admin user (no limits) and a stage
// user that may publish only to allow (and read its own inbox), and returns
// a JetStream handle for each.
func adminAndStage(t *testing.T, allow ...string) (admin, stage jetstream.JetStream) {
	t.Helper()
	// In-process only: a configuration with no listener would take
	// nats-server's default port, and parallel tests would fight over it.
	srv, err := natsembed.Start(natsembed.Options{StoreDir: t.TempDir(), Config: &server.Options{
		DontListen: true,
		Users: []*server.User{
			{Username: "admin", Password: "admin-pw"},
			{Username: "stage", Password: "stage-pw", Permissions: &server.Permissions{
				Publish: &server.SubjectPermission{Allow: allow},
				// its own inbox only
				Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX_stage.>"}},
			}},
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Shutdown)
	connect := func(user string) jetstream.JetStream {
		nc, err := srv.Connect(nats.UserInfo(user, user+"-pw"), nats.CustomInboxPrefix("_INBOX_"+user))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		return js
	}
	return connect("admin"), connect("stage")
}
