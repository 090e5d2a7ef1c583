package stage_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmprep/vmprep/pkg/stage"
)

// tenantOf is the key of the test messages: "alice-17" is alice's.
func tenantOf(m stage.Message) string {
	k, _, _ := strings.Cut(string(m.Data), "-")
	return k
}

// handledLog records the order in which messages were handled.
type handledLog struct {
	mu   sync.Mutex
	data []string
	at   map[string]time.Time
}

func (l *handledLog) add(d string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.data = append(l.data, d)
	if l.at == nil {
		l.at = map[string]time.Time{}
	}
	l.at[d] = time.Now()
}

func (l *handledLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.data)
}

// index is where d was handled (-1: not yet) and when.
func (l *handledLog) index(d string) (int, time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for i, x := range l.data {
		if x == d {
			return i, l.at[d]
		}
	}
	return -1, time.Time{}
}

// TestFairnessFloodAndOne: alice has 900 messages queued when bob's one
// arrives; with fair scheduling bob's is handled among the first few handled
// after it arrives, instead of after alice's whole backlog. The bound is on
// order, not on seconds, so a loaded machine does not make it flake.
func TestFairnessFloodAndOne(t *testing.T) {
	t.Parallel()
	// The backlog fits the pull-ahead window, the consumer's max ack
	// pending as setup makes it (1000); a deeper one per tenant is what the
	// resolver's per-namespace limit prevents.
	const flood, perMsg = 900, 5 * time.Millisecond
	js := startJS(t)
	ctx := context.Background()
	cc := stage.ConsumerConfig("worker", []string{inSubject}, 30*time.Second)
	if _, err := js.CreateConsumer(ctx, testStream, cc); err != nil {
		t.Fatal(err)
	}
	var data []string
	for i := 0; i < flood; i++ {
		data = append(data, fmt.Sprintf("alice-%d", i))
	}
	publish(t, js, data...)

	var log handledLog
	h := func(ctx context.Context, m stage.Message) ([]stage.Event, error) {
		time.Sleep(perMsg) // the work
		log.add(string(m.Data))
		return nil, nil
	}
	runRunner(t, js, h, stage.WithFairness(tenantOf, 0))
	waitFor(t, "the runner to start on alice's backlog", func() bool { return log.len() >= 10 })

	// What a lone request costs: the handler's time.
	arrived := log.len()
	sent := time.Now()
	publish(t, js, "bob-1")
	waitFor(t, "bob's message", func() bool { i, _ := log.index("bob-1"); return i >= 0 })
	i, at := log.index("bob-1")
	after := i - arrived
	t.Logf("bob's message was handled %d messages after it arrived, %s after it was sent, with %d of alice's queued (a lone message takes %s)",
		after, at.Sub(sent).Round(time.Millisecond), flood-arrived, perMsg)
	// Pulling the rest of the backlog ahead is one batch per 256: a few
	// hundred milliseconds at most against the 5 ms messages; in stream
	// order bob would wait for the ~1990 others.
	if after > 100 {
		t.Fatalf("bob's message was handled %d messages after it arrived; want at most 100 (alice had %d queued)", after, flood-arrived)
	}
}

// TestFairQueuedMessagesAreKeptAlive: messages waiting in the fair queue
// longer than the ack wait are not redelivered.
func TestFairQueuedMessagesAreKeptAlive(t *testing.T) {
	t.Parallel()
	js := startJS(t)
	var redelivered, handled atomic.Int32
	h := func(ctx context.Context, m stage.Message) ([]stage.Event, error) {
		if m.Delivery > 1 {
			redelivered.Add(1)
		}
		handled.Add(1)
		time.Sleep(300 * time.Millisecond)
		return nil, nil
	}
	runRunner(t, js, h, stage.WithAckWait(time.Second), stage.WithFairness(tenantOf, 0))
	var data []string
	for i := 0; i < 10; i++ { // 3 s of work, queued together: three ack waits
		data = append(data, fmt.Sprintf("alice-%d", i))
	}
	publish(t, js, data...)
	waitFor(t, "every message handled", func() bool { return handled.Load() >= 10 && workLeft(t, js) == 0 })
	if n := redelivered.Load(); n != 0 {
		t.Fatalf("%d queued messages were redelivered: the queue must keep them alive", n)
	}
	if n := handled.Load(); n != 10 {
		t.Fatalf("handled %d times, want 10", n)
	}
}

// TestKeyLimitRefuses: a key holding its limit gets its further messages
// refused at once with a failure naming the limit; other keys are served.
func TestKeyLimitRefuses(t *testing.T) {
	t.Parallel()
	js := startJS(t)
	gate := make(chan struct{})
	var log handledLog
	h := func(ctx context.Context, m stage.Message) ([]stage.Event, error) {
		if tenantOf(m) == "alice" {
			<-gate
		}
		log.add(string(m.Data))
		return []stage.Event{{Subject: outSubject, Data: m.Data, ID: "out-" + string(m.Data)}}, nil
	}
	refusal := func(key string, limit int) error {
		return fmt.Errorf("%w: tenant %s already has %d messages waiting (limit %d, set by the test)", stage.ErrQueueFull, key, limit, limit)
	}
	runRunner(t, js, h, stage.WithConcurrency(2), stage.WithFairness(tenantOf, 0), stage.WithKeyLimit(3, refusal))
	var data []string
	for i := 0; i < 10; i++ {
		data = append(data, fmt.Sprintf("alice-%d", i))
	}
	publish(t, js, append(data, "bob-1")...)
	fails := collect(t, js, failSubj, 7)
	for _, f := range fails {
		if s := string(f.Data()); !strings.Contains(s, "limit 3") || !strings.Contains(s, "tenant alice") {
			t.Errorf("failure %q does not name the tenant and the limit", s)
		}
	}
	close(gate)
	collect(t, js, outSubject, 4)
	waitFor(t, "the work stream to empty", func() bool { return workLeft(t, js) == 0 })
	if n := count(t, js, failSubj); n != 7 {
		t.Fatalf("%d refusals, want 7", n)
	}
	if !errors.Is(refusal("x", 1), stage.ErrQueueFull) {
		t.Fatal("refusal does not wrap ErrQueueFull")
	}
}

func waitFor(t *testing.T, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
