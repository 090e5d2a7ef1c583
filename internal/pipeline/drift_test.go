package pipeline_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vmprep/vmprep/internal/metrics"
	"github.com/vmprep/vmprep/internal/ops"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/messages"
)

// A stage consumer changed behind setup's back (its filter rewritten, as a
// hijacking stage did) is reported by status and the metric, the stage
// bound to it stops taking work and says why, a stage starting on it
// refuses, and setup restores it — also one the server cannot update back
// (a deliver policy), which setup makes again without losing its work.
func TestConsumerDrift(t *testing.T) {
	t.Parallel()
	admin, stageJS := adminAndStage(t, "$JS.API.INFO", "$JS.API.STREAM.INFO.>",
		"$JS.API.CONSUMER.INFO.VMPREP_WORK.fetcher", "$JS.API.CONSUMER.MSG.NEXT.VMPREP_WORK.fetcher", "$JS.ACK.VMPREP_WORK.fetcher.>")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if _, err := pipeline.Setup(ctx, admin, pipeline.SetupConfig{}); err != nil {
		t.Fatal(err)
	}
	if err := pipeline.SetupConsumers(ctx, admin, 0, []string{"mac1"}, nil); err != nil {
		t.Fatal(err)
	}

	reg := prometheus.NewRegistry()
	m, err := metrics.New(reg)
	if err != nil {
		t.Fatal(err)
	}
	handled := make(chan string, 16)
	h := func(_ context.Context, msg stage.Message) ([]stage.Event, error) {
		handled <- msg.Subject
		return nil, nil
	}
	r, err := stage.New(ctx, stageJS, messages.StreamWork, messages.StageFetcher, messages.SubjectFetch, h,
		stage.WithDriftCheck(50*time.Millisecond), stage.WithPullWait(100*time.Millisecond), stage.WithObserver(m.Observer()))
	if err != nil {
		t.Fatal(err)
	}
	rctx, stopRunner := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { defer close(done); r.Run(rctx) }()
	defer func() { stopRunner(); <-done }()
	if _, err := admin.Publish(ctx, messages.SubjectFetch, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-handled:
	case <-time.After(30 * time.Second):
		t.Fatal("the fetcher took no work from its consumer as setup made it")
	}
	if ov, err := ops.GetOverview(ctx, admin); err != nil || len(ov.Drifted) != 0 {
		t.Fatalf("status before any change: drifted %v (%v)", ov.Drifted, err)
	}

	// The hijack: the fetcher's consumer now takes a subject nobody sends to.
	c, err := admin.Consumer(ctx, messages.StreamWork, messages.StageFetcher)
	if err != nil {
		t.Fatal(err)
	}
	cc := c.CachedInfo().Config
	cc.FilterSubject = messages.TargetSubject("nowhere")
	if _, err := admin.UpdateConsumer(ctx, messages.StreamWork, cc); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the runner noticing its consumer changed", func() bool { return r.Drift() != nil })
	var d *stage.DriftError
	if err := r.Drift(); !errors.As(err, &d) || !strings.Contains(err.Error(), `filter subjects is ["vmprep.asset.target.nowhere"], setup makes ["vmprep.asset.fetch"]`) ||
		!strings.Contains(err.Error(), "run `vmprep setup`") {
		t.Errorf("drift: %v", err)
	}
	if r.Consuming() {
		t.Error("a runner on a changed consumer says it is consuming (/healthz would say 200)")
	}
	if v, _ := testutil.Gather(t, reg).Value("vmprep_consumer_drift", "consumer", "fetcher"); v != 1 {
		t.Errorf("vmprep_consumer_drift = %v, want 1", v)
	}
	ov, err := ops.GetOverview(ctx, admin)
	if err != nil {
		t.Fatal(err)
	}
	if len(ov.Drifted) != 1 || ov.Drifted[0] != messages.StageFetcher {
		t.Errorf("status: drifted %v, want [fetcher]", ov.Drifted)
	}
	_, err = stage.New(ctx, stageJS, messages.StreamWork, messages.StageFetcher, messages.SubjectFetch, h)
	if !errors.As(err, &d) {
		t.Errorf("a fetcher starting on the changed consumer: %v, want a refusal saying what changed", err)
	}

	// The operator's setup restores it, and the runner takes work again.
	if err := pipeline.SetupConsumers(ctx, admin, 0, []string{"mac1"}, nil); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the runner consuming the restored consumer", func() bool { return r.Drift() == nil })
	if _, err := admin.Publish(ctx, messages.SubjectFetch, []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-handled:
	case <-time.After(30 * time.Second):
		t.Fatal("the fetcher took no work from its restored consumer")
	}

	// A change the server cannot update back: a converter host's consumer
	// made again as a push consumer, relaying its work to someone's inbox;
	// setup makes it again, and the message waiting survives.
	if _, err := admin.Publish(ctx, messages.TargetSubject("mac1"), []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	if err := admin.DeleteConsumer(ctx, messages.StreamWork, messages.TargetConsumer("mac1")); err != nil {
		t.Fatal(err)
	}
	hijacked := stage.ConsumerConfig(messages.TargetConsumer("mac1"), []string{messages.TargetSubject("mac1")}, time.Minute)
	hijacked.DeliverSubject = "_INBOX_attacker.mac1"
	if _, err := admin.CreateConsumer(ctx, messages.StreamWork, hijacked); err != nil {
		t.Fatal(err)
	}
	if ov, _ := ops.GetOverview(ctx, admin); len(ov.Drifted) != 1 || ov.Drifted[0] != "converter_mac1" {
		t.Errorf("status: drifted %v, want [converter_mac1]", ov.Drifted)
	}
	// A setup that does not name the host restores its consumer all the same.
	if err := pipeline.SetupConsumers(ctx, admin, 0, nil, nil); err != nil {
		t.Fatal(err)
	}
	if ov, _ := ops.GetOverview(ctx, admin); len(ov.Drifted) != 0 {
		t.Errorf("status after setup: drifted %v", ov.Drifted)
	}
	cons, err := admin.Consumer(ctx, messages.StreamWork, messages.TargetConsumer("mac1"))
	if err != nil {
		t.Fatal(err)
	}
	if msg, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second)); err != nil || msg.Subject() != messages.TargetSubject("mac1") {
		t.Errorf("the work waiting for mac1 after setup made its consumer again: %v", err)
	}
}

// eventually waits up to 30s for cond, failing the test naming what.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
