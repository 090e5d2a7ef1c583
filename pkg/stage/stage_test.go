package stage_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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

const (
	testStream = "TEST_WORK"
	inSubject  = "work.in"
	outSubject = "work.out"
	deadSubj   = "work.dead"
	failSubj   = "work.failed"
)

func startJS(t *testing.T) jetstream.JetStream {
	t.Helper()
	_, _, js := testutil.EmbeddedJetStream(t)
	ctx := context.Background()
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: testStream, Subjects: []string{"work.in"}, Retention: jetstream.WorkQueuePolicy}); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "TEST_OUT", Subjects: []string{outSubject, deadSubj, failSubj}}); err != nil {
		t.Fatal(err)
	}
	return js
}

// collect reads n messages from subject on the TEST_OUT stream, failing after a generous deadline.
func collect(t *testing.T, js jetstream.JetStream, subject string, n int) []jetstream.Msg {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := js.OrderedConsumer(ctx, "TEST_OUT", jetstream.OrderedConsumerConfig{FilterSubjects: []string{subject}})
	if err != nil {
		t.Fatal(err)
	}
	var out []jetstream.Msg
	for len(out) < n {
		m, err := cons.Next(jetstream.FetchContext(ctx))
		if err != nil {
			t.Fatalf("waiting for %d messages on %s, got %d: %v", n, subject, len(out), err)
		}
		out = append(out, m)
	}
	return out
}

func count(t *testing.T, js jetstream.JetStream, subject string) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), "TEST_OUT")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background(), jetstream.WithSubjectFilter(subject))
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Subjects[subject]
}

func workLeft(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), testStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func runRunner(t *testing.T, js jetstream.JetStream, h stage.Handler, opts ...stage.Option) context.CancelFunc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	base := []stage.Option{
		stage.WithBackoff(testutil.Backoff(10*time.Millisecond, 50*time.Millisecond)),
		stage.WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil))),
		stage.WithMaxDeliver(3),
		// A short pull: stopping the runner waits for the pull in progress.
		stage.WithPullWait(200 * time.Millisecond),
		stage.WithFailure(func(m stage.Message, err error) []stage.Event {
			return []stage.Event{{Subject: failSubj, Data: []byte(fmt.Sprintf("%s: %v", m.Data, err)), ID: "fail-" + string(m.Data)}}
		}),
		stage.WithDeadLetter(func(m stage.Message, reason string) stage.Event {
			b, _ := json.Marshal(map[string]string{"data": string(m.Data), "reason": reason})
			return stage.Event{Subject: deadSubj, Data: b, ID: "dead-" + string(m.Data)}
		}),
	}
	r, err := stage.New(ctx, js, testStream, "worker", inSubject, h, append(base, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	stop := func() { cancel(); <-done }
	t.Cleanup(stop)
	return stop
}

func publish(t *testing.T, js jetstream.JetStream, data ...string) {
	t.Helper()
	for _, d := range data {
		if _, err := js.Publish(context.Background(), inSubject, []byte(d)); err != nil {
			t.Fatal(err)
		}
	}
}

func TestOutcomes(t *testing.T) {
	t.Parallel()
	js := startJS(t)
	var calls sync.Map // data → *atomic.Int32
	h := func(ctx context.Context, m stage.Message) ([]stage.Event, error) {
		v, _ := calls.LoadOrStore(string(m.Data), new(atomic.Int32))
		n := v.(*atomic.Int32).Add(1)
		switch string(m.Data) {
		case "ok":
			return []stage.Event{{Subject: outSubject, Data: []byte("ok-out"), ID: "ok"}}, nil
		case "flaky": // fails twice, then works
			if n < 3 {
				return nil, errors.New("temporarily unavailable")
			}
			return []stage.Event{{Subject: outSubject, Data: []byte("flaky-out"), ID: "flaky"}}, nil
		case "always-transient":
			return nil, errors.New("still down")
		case "permanent":
			return nil, stage.Permanent(errors.New("404 not found"))
		case "poison":
			return nil, stage.Poison(errors.New("not JSON"))
		case "panic":
			panic("handler bug")
		}
		return nil, nil
	}
	runRunner(t, js, h)
	publish(t, js, "ok", "flaky", "always-transient", "permanent", "poison", "panic")

	outs := collect(t, js, outSubject, 2)
	got := map[string]bool{}
	for _, m := range outs {
		got[string(m.Data())] = true
	}
	if !got["ok-out"] || !got["flaky-out"] {
		t.Fatalf("outputs = %v, want ok-out and flaky-out", got)
	}
	fails := collect(t, js, failSubj, 4)
	failText := map[string]string{}
	for _, m := range fails {
		var key string
		fmt.Sscanf(string(m.Data()), "%s", &key)
		failText[key[:len(key)-1]] = string(m.Data())
	}
	for _, k := range []string{"always-transient", "permanent", "poison", "panic"} {
		if _, ok := failText[k]; !ok {
			t.Errorf("no failure event for %q; got %v", k, failText)
		}
	}
	dead := collect(t, js, deadSubj, 2)
	for _, m := range dead {
		var d map[string]string
		if err := json.Unmarshal(m.Data(), &d); err != nil {
			t.Fatal(err)
		}
		if d["reason"] == "" {
			t.Errorf("dead letter without reason: %s", m.Data())
		}
		if d["data"] != "poison" && d["data"] != "panic" {
			t.Errorf("unexpected dead letter %s", m.Data())
		}
	}
	callsOf := func(k string) int32 {
		v, ok := calls.Load(k)
		if !ok {
			return 0
		}
		return v.(*atomic.Int32).Load()
	}
	tests := []struct {
		data string
		want int32
	}{
		{"ok", 1}, {"flaky", 3}, {"always-transient", 3}, {"permanent", 1}, {"poison", 1}, {"panic", 1},
	}
	for _, tt := range tests {
		if got := callsOf(tt.data); got != tt.want {
			t.Errorf("%s handled %d times, want %d", tt.data, got, tt.want)
		}
	}
	// Every input settled: nothing left in the work queue.
	waitFor(t, "the work queue to empty", func() bool { return workLeft(t, js) == 0 })
	// The worker still serves after a panic.
	publish(t, js, "ok")
	waitFor(t, "the second ok to be handled and acked", func() bool { return callsOf("ok") == 2 && workLeft(t, js) == 0 })
	// Its hand-off reused id "ok", so it was deduplicated.
	if n := count(t, js, outSubject); n != 2 {
		t.Errorf("out subject holds %d messages, want 2 (duplicate id must be dropped)", n)
	}
}

func TestLongWorkIsKeptAlive(t *testing.T) {
	t.Parallel()
	js := startJS(t)
	const ackWait = time.Second
	var calls atomic.Int32
	h := func(ctx context.Context, m stage.Message) ([]stage.Event, error) {
		calls.Add(1)
		select { // the work itself: it lasts three ack waits and more
		case <-time.After(3*ackWait + ackWait/2):
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		return []stage.Event{{Subject: outSubject, Data: m.Data, ID: "long"}}, nil
	}
	runRunner(t, js, h, stage.WithAckWait(ackWait), stage.WithConcurrency(2))
	publish(t, js, "long")
	collect(t, js, outSubject, 1)
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times; in-progress acks should have prevented redelivery", n)
	}
}

// TestFailedKeepAliveIsLogged: when in-progress acks cannot be sent (here the
// connection is gone), the runner says so: the message may be redelivered to
// another worker while this one still works on it.
func TestFailedKeepAliveIsLogged(t *testing.T) {
	t.Parallel()
	js := startJS(t)
	var logs testutil.LockedBuffer
	started := make(chan struct{})
	h := func(ctx context.Context, m stage.Message) ([]stage.Event, error) {
		close(started)
		<-ctx.Done()
		return nil, ctx.Err()
	}
	runRunner(t, js, h, stage.WithAckWait(300*time.Millisecond), stage.WithDrainTimeout(time.Millisecond),
		stage.WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	publish(t, js, "x")
	<-started
	js.Conn().Close()
	waitFor(t, "a keep-alive failure logged", func() bool { return strings.Contains(logs.String(), "keep-alive failed") })
	if !strings.Contains(logs.String(), "connection closed") {
		t.Errorf("the keep-alive failure does not say why; log:\n%s", logs.String())
	}
}

func TestDrainFinishesInFlightWork(t *testing.T) {
	t.Parallel()
	js := startJS(t)
	started := make(chan struct{})
	release := make(chan struct{})
	h := func(ctx context.Context, m stage.Message) ([]stage.Event, error) {
		close(started)
		<-release
		return []stage.Event{{Subject: outSubject, Data: m.Data, ID: "drained"}}, nil
	}
	stop := runRunner(t, js, h, stage.WithDrainTimeout(time.Minute))
	publish(t, js, "x")
	<-started
	stopped := make(chan struct{})
	go func() { stop(); close(stopped) }()
	// Run must wait for the in-flight handler rather than return at once.
	select {
	case <-stopped:
		t.Fatal("Run returned while a handler was still running")
	case <-time.After(200 * time.Millisecond):
	}
	close(release)
	<-stopped
	if n := count(t, js, outSubject); n != 1 {
		t.Fatalf("after drain, out holds %d messages, want 1", n)
	}
	if n := workLeft(t, js); n != 0 {
		t.Fatalf("after drain, %d work messages left, want 0 (acked)", n)
	}
}

func TestDrainTimeoutReturnsWork(t *testing.T) {
	t.Parallel()
	js := startJS(t)
	started := make(chan struct{})
	h := func(ctx context.Context, m stage.Message) ([]stage.Event, error) {
		close(started)
		<-ctx.Done() // never finishes on its own
		return nil, ctx.Err()
	}
	// A long ack wait: only an explicit nak can make the message available again soon.
	stop := runRunner(t, js, h, stage.WithDrainTimeout(100*time.Millisecond), stage.WithAckWait(time.Hour))
	publish(t, js, "stuck")
	<-started
	stop()
	// A second runner picks it up: with an hour-long ack wait, only the nak
	// can have made it available again.
	got := make(chan string, 1)
	runRunner(t, js, func(ctx context.Context, m stage.Message) ([]stage.Event, error) {
		got <- string(m.Data)
		return nil, nil
	})
	select {
	case d := <-got:
		if d != "stuck" {
			t.Fatalf("got %q", d)
		}
	case <-time.After(time.Minute):
		t.Fatal("the drained message was not handed back")
	}
}

// TestCrashLoopEndsInFailure: a message whose workers never finish it (here a
// raw consumer naks it over and over, as crashed workers would leave it) is
// ended with a failure event without running the handler again.
func TestCrashLoopEndsInFailure(t *testing.T) {
	t.Parallel()
	js := startJS(t)
	ctx := context.Background()
	cons, err := js.CreateConsumer(ctx, testStream, stage.ConsumerConfig("worker", []string{inSubject}, 30*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	publish(t, js, "crasher")
	for i := 0; i < 20; i++ {
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatal(err)
		}
		if err := m.Nak(); err != nil {
			t.Fatal(err)
		}
	}
	var calls atomic.Int32
	runRunner(t, js, func(ctx context.Context, m stage.Message) ([]stage.Event, error) {
		calls.Add(1)
		return nil, nil
	})
	fails := collect(t, js, failSubj, 1)
	if !strings.Contains(string(fails[0].Data()), "gave up") {
		t.Errorf("failure event %q does not say it gave up", fails[0].Data())
	}
	if n := calls.Load(); n != 0 {
		t.Errorf("handler ran %d times on a crash-looping message", n)
	}
}

func TestWorkersShareOneConsumer(t *testing.T) {
	t.Parallel()
	js := startJS(t)
	var mu sync.Mutex
	seen := map[string]int{}
	byRunner := [2]atomic.Int32{}
	mk := func(i int) stage.Handler {
		return func(ctx context.Context, m stage.Message) ([]stage.Event, error) {
			mu.Lock()
			seen[string(m.Data)]++
			mu.Unlock()
			byRunner[i].Add(1)
			time.Sleep(20 * time.Millisecond)
			return nil, nil
		}
	}
	runRunner(t, js, mk(0))
	runRunner(t, js, mk(1))
	const n = 40
	for i := 0; i < n; i++ {
		publish(t, js, fmt.Sprint(i))
	}
	waitFor(t, "the work queue to empty", func() bool { return workLeft(t, js) == 0 })
	mu.Lock()
	defer mu.Unlock()
	if len(seen) != n {
		t.Fatalf("handled %d distinct messages, want %d", len(seen), n)
	}
	for k, c := range seen {
		if c != 1 {
			t.Errorf("message %s handled %d times", k, c)
		}
	}
	if byRunner[0].Load() == 0 || byRunner[1].Load() == 0 {
		t.Errorf("work not shared: %d / %d", byRunner[0].Load(), byRunner[1].Load())
	}
}

// TestRetryNotify: each transient failure that goes back for another
// delivery is reported with its cause, the delay and the delivery that
// comes next; the last one (which fails the message) and permanent ones are not.
func TestRetryNotify(t *testing.T) {
	t.Parallel()
	js := startJS(t)
	var mu sync.Mutex
	var retries []stage.Retry
	cause := errors.New("host not reachable")
	runRunner(t, js, func(ctx context.Context, m stage.Message) ([]stage.Event, error) {
		if string(m.Data) == "permanent" {
			return nil, stage.Permanent(errors.New("no"))
		}
		return nil, cause
	}, stage.WithRetryNotify(func(r stage.Retry) {
		mu.Lock()
		defer mu.Unlock()
		retries = append(retries, r)
	}))
	publish(t, js, "permanent", "flaky")
	collect(t, js, failSubj, 2)
	mu.Lock()
	defer mu.Unlock()
	if len(retries) != 2 { // deliveries 1 and 2 of 3 are retried; the 3rd fails
		t.Fatalf("%d retries reported, want 2: %+v", len(retries), retries)
	}
	for i, r := range retries {
		if string(r.Message.Data) != "flaky" || !errors.Is(r.Err, cause) || r.Next != i+2 || r.Max != 3 || r.In <= 0 || r.Message.Delivery != i+1 {
			t.Errorf("retry %d: %+v", i, r)
		}
	}
}

// A subject that refuses every publish (here its stream takes no message
// larger than a byte; in a deployment, a permission missing) does not keep a
// message forever: a hand-off that never goes out ends in a failure event,
// and a failure event that never goes out ends in a dead letter naming both
// errors. The stream refuses at once: a subject no stream takes would do
// too, but the client asks again on "no responders", and 13 deliveries of
// that take seconds.
func TestUnpublishableEnds(t *testing.T) {
	t.Parallel()
	const nowhere = "nowhere.at.all"
	tests := []struct {
		name    string
		handler stage.Handler
		opts    []stage.Option
		subject string // where the message ends
		says    string
	}{
		{
			name: "hand-off refused",
			handler: func(ctx context.Context, m stage.Message) ([]stage.Event, error) {
				return []stage.Event{{Subject: nowhere, Data: m.Data, ID: "out-" + string(m.Data)}}, nil
			},
			subject: failSubj,
			says:    "handing on the result failed",
		},
		{
			name: "failure refused",
			handler: func(ctx context.Context, m stage.Message) ([]stage.Event, error) {
				return nil, stage.Permanent(errors.New("404 not found"))
			},
			opts: []stage.Option{stage.WithFailure(func(m stage.Message, err error) []stage.Event {
				return []stage.Event{{Subject: nowhere, Data: []byte(err.Error()), ID: "fail-" + string(m.Data)}}
			})},
			subject: deadSubj,
			says:    "its failure could not be published",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			js := startJS(t)
			if _, err := js.CreateStream(context.Background(), jetstream.StreamConfig{Name: "TEST_REFUSE", Subjects: []string{nowhere}, MaxMsgSize: 1}); err != nil {
				t.Fatal(err)
			}
			runRunner(t, js, tt.handler, tt.opts...)
			publish(t, js, "stuck")
			got := collect(t, js, tt.subject, 1)
			if !strings.Contains(string(got[0].Data()), tt.says) {
				t.Errorf("%s: %q does not say %q", tt.subject, got[0].Data(), tt.says)
			}
			waitFor(t, "the work stream to empty", func() bool { return workLeft(t, js) == 0 })
		})
	}
}
