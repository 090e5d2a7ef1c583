package stage_test

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmprep/vmprep/internal/testutil"
	"github.com/vmprep/vmprep/pkg/stage"
)

// recorder is an Observer that counts what it hears.
type recorder struct {
	mu           sync.Mutex
	outcomes     map[string]int // "<data>/<outcome>"
	started      int
	redeliveries int
	settled      int
	dead         int
}

func (r *recorder) Started(_ string, delivery int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.started++
	if delivery > 1 {
		r.redeliveries++
	}
}

func (r *recorder) Settled(_ string, o stage.Outcome, elapsed time.Duration) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.settled++
	r.outcomes[string(o)]++
	if elapsed < 0 {
		r.outcomes["negative-elapsed"]++
	}
}

func (r *recorder) DeadLettered(string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.dead++
}

func (r *recorder) snapshot() (map[string]int, int, int, int, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := map[string]int{}
	for k, v := range r.outcomes {
		out[k] = v
	}
	return out, r.started, r.redeliveries, r.settled, r.dead
}

// TestObserverHearsEveryOutcome: the runner reports each delivery's start and
// how it was settled, with redeliveries and dead letters, and its log lines
// about a message carry the message's request_id.
func TestObserverHearsEveryOutcome(t *testing.T) {
	t.Parallel()
	js := startJS(t)
	rec := &recorder{outcomes: map[string]int{}}
	var logs testutil.LockedBuffer
	var calls sync.Map
	h := func(ctx context.Context, m stage.Message) ([]stage.Event, error) {
		var body struct {
			RequestID string `json:"request_id"`
		}
		_ = json.Unmarshal(m.Data, &body)
		v, _ := calls.LoadOrStore(body.RequestID, new(atomic.Int32))
		n := v.(*atomic.Int32).Add(1)
		switch body.RequestID {
		case "ok":
			return []stage.Event{{Subject: outSubject, Data: m.Data, ID: "ok"}}, nil
		case "flaky":
			if n < 3 {
				return nil, errors.New("temporarily unavailable")
			}
			return []stage.Event{{Subject: outSubject, Data: m.Data, ID: "flaky"}}, nil
		case "always-transient":
			return nil, errors.New("still down")
		case "permanent":
			return nil, stage.Permanent(errors.New("404 not found"))
		case "poison":
			return nil, stage.Poison(errors.New("not readable"))
		}
		panic("handler bug")
	}
	stop := runRunner(t, js, h, stage.WithObserver(rec),
		stage.WithLogger(slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))))
	ids := []string{"ok", "flaky", "always-transient", "permanent", "poison", "panic"}
	for _, id := range ids {
		publish(t, js, `{"request_id":"`+id+`"}`)
	}
	// ok, flaky (3 deliveries), always-transient (3), permanent, poison, panic: 10 settlements.
	waitFor(t, "10 deliveries settled", func() bool {
		_, _, _, settled, _ := rec.snapshot()
		return settled >= 10 && workLeft(t, js) == 0
	})
	stop()
	outcomes, started, redeliveries, settled, dead := rec.snapshot()
	want := map[string]int{"ok": 2, "retry": 4, "exhausted": 1, "permanent": 1, "poison": 2}
	for k, n := range want {
		if outcomes[k] != n {
			t.Errorf("outcome %s: %d, want %d (all: %v)", k, outcomes[k], n, outcomes)
		}
	}
	if len(outcomes) != len(want) {
		t.Errorf("unexpected outcomes: %v", outcomes)
	}
	if started != 10 || settled != 10 {
		t.Errorf("started %d, settled %d; want 10 each (in-flight must return to zero)", started, settled)
	}
	if redeliveries != 4 {
		t.Errorf("redeliveries %d, want 4 (flaky and always-transient, twice each)", redeliveries)
	}
	if dead != 2 {
		t.Errorf("dead letters %d, want 2 (poison and panic)", dead)
	}

	// Every line about a message names its request; none uses another key.
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line is not JSON: %q", line)
		}
		if _, ok := rec["request"]; ok {
			t.Errorf("log line uses \"request\", not \"request_id\": %s", line)
		}
		if id, ok := rec["request_id"].(string); ok {
			seen[id] = true
		}
	}
	for _, id := range []string{"flaky", "always-transient", "permanent", "poison", "panic"} {
		if !seen[id] {
			t.Errorf("no log line carries request_id %q:\n%s", id, logs.String())
		}
	}
}

// TestConsumingFollowsTheConsumer: a runner is consuming while it serves and
// its pulls reach the consumer; deleting the durable consumer (which the
// runner does not recreate) makes it stop consuming, which is what a
// liveness probe must notice.
func TestConsumingFollowsTheConsumer(t *testing.T) {
	t.Parallel()
	js := startJS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r, err := stage.New(ctx, js, testStream, "probe", inSubject, func(context.Context, stage.Message) ([]stage.Event, error) {
		return nil, nil
	}, stage.WithPullWait(100*time.Millisecond), stage.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	if r.Consuming() {
		t.Fatal("consuming before Run")
	}
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	waitFor(t, "the runner to consume", r.Consuming)
	if err := js.DeleteConsumer(context.Background(), testStream, "probe"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the runner to notice its consumer is gone", func() bool { return !r.Consuming() })
	cancel()
	<-done
	if r.Consuming() {
		t.Fatal("consuming after Run returned")
	}
}

// TestPullFailuresLogOncePerOutage: while its consumer is gone, every worker
// of a runner retries its pull twice a second; that is one warning, the
// rest at debug, and one line when pulls reach the consumer again.
func TestPullFailuresLogOncePerOutage(t *testing.T) {
	t.Parallel()
	js := startJS(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var logs testutil.LockedBuffer
	log := slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r, err := stage.New(ctx, js, testStream, "probe", inSubject, func(context.Context, stage.Message) ([]stage.Event, error) {
		return nil, nil
	}, stage.WithPullWait(100*time.Millisecond), stage.WithConcurrency(4), stage.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	waitFor(t, "the runner to consume", r.Consuming)
	if err := js.DeleteConsumer(context.Background(), testStream, "probe"); err != nil {
		t.Fatal(err)
	}
	count := func(msg, level string) int {
		n := 0
		for _, line := range strings.Split(logs.String(), "\n") {
			var rec struct{ Msg, Level string }
			if json.Unmarshal([]byte(line), &rec) == nil && rec.Msg == msg && (level == "" || rec.Level == level) {
				n++
			}
		}
		return n
	}
	waitFor(t, "eight failed pulls", func() bool { return count("pull failed; retrying", "") >= 8 })
	if n := count("pull failed; retrying", "WARN"); n != 1 {
		t.Errorf("%d warnings about failed pulls in one outage, want 1:\n%s", n, logs.String())
	}
	if _, err := js.CreateOrUpdateConsumer(context.Background(), testStream, jetstream.ConsumerConfig{Durable: "probe", FilterSubject: inSubject, AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the runner to pull again", r.Consuming)
	cancel()
	<-done
	if n := count("pulling again", "INFO"); n != 1 {
		t.Errorf("%d lines saying pulls work again, want 1:\n%s", n, logs.String())
	}
}
