package stage

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Fair scheduling. A consumer delivers in stream order, so one tenant's
// flood queued ahead of another tenant's single message delays it by the
// whole flood. With WithFairness the runner instead pulls ahead (up to a
// bound of messages and bytes) into an in-process queue per key (the
// tenant), and its workers take from the keys round-robin: a message waits
// for at most one message of every other key with work, not for the flood.
//
// Messages waiting in the queue are the consumer's pending acks: they are
// kept alive with in-progress acks, so the ack wait never redelivers them,
// and a crash loses nothing (un-acked messages are redelivered). A drain
// hands the waiting ones back at once (nak) for other processes.
//
// Why not the server's own tools: a filtered consumer per tenant is not
// allowed on a work-queue stream (filters may not overlap the stage's),
// priority groups (pinned client, overflow) choose among pulling clients,
// not among subjects, and a per-subject message limit caps what is stored,
// not the order of delivery.

// ErrQueueFull is wrapped by the error a refused message fails with when its
// key already holds its limit (WithKeyLimit).
var ErrQueueFull = errors.New("queue full")

// KeyFunc names the key (the tenant) a message is scheduled under.
type KeyFunc func(Message) string

type fairConfig struct {
	key        KeyFunc
	ahead      int
	aheadBytes int
	perKey     int
	refusal    func(key string, limit int) error
}

// DefaultAheadBytes bounds the bytes a fair runner holds pulled ahead.
const DefaultAheadBytes = 64 << 20

// WithFairness makes the runner serve keys round-robin: it pulls up to ahead
// messages (and DefaultAheadBytes) ahead of its workers and queues them per
// key(msg). ahead is capped by the consumer's MaxAckPending; 0 means that.
func WithFairness(key KeyFunc, ahead int) Option {
	return func(c *config) {
		c.fair = &fairConfig{key: key, ahead: ahead, aheadBytes: DefaultAheadBytes}
	}
}

// WithKeyLimit (with WithFairness) refuses a message whose key already has
// limit messages waiting or in progress in this runner: it fails at once,
// through the Failure policy, with refusal(key, limit) (which should wrap
// ErrQueueFull and say which limit, and where it is set). 0: no limit.
func WithKeyLimit(limit int, refusal func(key string, limit int) error) Option {
	return func(c *config) {
		if c.fair != nil {
			c.fair.perKey, c.fair.refusal = limit, refusal
		}
	}
}

// queued is one message held by the fair queue.
type queued struct {
	jm  jetstream.Msg
	key string
	n   int // bytes
}

// fairQueue is the in-process queue: FIFO per key, keys served round-robin.
type fairQueue struct {
	mu      sync.Mutex
	ring    []string // keys with waiting messages, in serving order
	byKey   map[string][]*queued
	held    map[string]int // waiting + in progress, per key
	running map[string]int // in progress, per key
	total   int            // waiting + in progress
	bytes   int            // of waiting + in progress
	ready   chan struct{}  // a message is waiting (capacity 1)
	space   chan struct{}  // a message was settled (capacity 1)
	ahead   int
	maxByte int
}

func newFairQueue(ahead, maxBytes int) *fairQueue {
	return &fairQueue{byKey: map[string][]*queued{}, held: map[string]int{}, running: map[string]int{},
		ready: make(chan struct{}, 1), space: make(chan struct{}, 1), ahead: ahead, maxByte: maxBytes}
}

func signal(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// room is how many more messages may be pulled now (0: wait for space).
func (q *fairQueue) room() int {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.bytes >= q.maxByte {
		return 0
	}
	return max(q.ahead-q.total, 0)
}

// push queues it unless its key holds limit (> 0) messages already; it
// returns the key's count when refused.
func (q *fairQueue) push(it *queued, limit int) (held int, ok bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if h := q.held[it.key]; limit > 0 && h >= limit {
		return h, false
	}
	if len(q.byKey[it.key]) == 0 {
		q.ring = append(q.ring, it.key)
	}
	q.byKey[it.key] = append(q.byKey[it.key], it)
	q.held[it.key]++
	q.total++
	q.bytes += it.n
	signal(q.ready)
	return 0, true
}

// pop takes the head of the next key in turn, waiting until there is one or
// ctx ends (nil). The turn goes to the first key in the ring with the fewest
// messages in progress, so that with several workers one key cannot hold
// them all while another waits.
func (q *fairQueue) pop(ctx context.Context) *queued {
	for {
		q.mu.Lock()
		if len(q.ring) > 0 {
			pick := 0
			for i, k := range q.ring {
				if q.running[k] < q.running[q.ring[pick]] {
					pick = i
				}
			}
			key := q.ring[pick]
			q.ring = append(q.ring[:pick:pick], q.ring[pick+1:]...)
			list := q.byKey[key]
			it := list[0]
			if len(list) == 1 {
				delete(q.byKey, key)
			} else {
				q.byKey[key] = list[1:]
				q.ring = append(q.ring, key) // its turn comes again after the others'
			}
			q.running[key]++
			if len(q.ring) > 0 {
				signal(q.ready) // wake another worker
			}
			q.mu.Unlock()
			return it
		}
		q.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-q.ready:
		}
	}
}

// done releases a popped message's place.
func (q *fairQueue) done(it *queued) {
	q.mu.Lock()
	if q.held[it.key]--; q.held[it.key] <= 0 {
		delete(q.held, it.key)
	}
	if q.running[it.key]--; q.running[it.key] <= 0 {
		delete(q.running, it.key)
	}
	q.total--
	q.bytes -= it.n
	q.mu.Unlock()
	signal(q.space)
}

// waiting returns the messages not yet taken by a worker; take also
// removes them.
func (q *fairQueue) waiting(take bool) []*queued {
	q.mu.Lock()
	defer q.mu.Unlock()
	var out []*queued
	for _, k := range q.ring {
		out = append(out, q.byKey[k]...)
	}
	if take {
		for _, it := range out {
			if q.held[it.key]--; q.held[it.key] <= 0 {
				delete(q.held, it.key)
			}
			q.total--
			q.bytes -= it.n
		}
		q.ring, q.byKey = nil, map[string][]*queued{}
	}
	return out
}

// Queued is how many messages the runner holds pulled ahead, not yet taken
// by a worker (0 without WithFairness).
func (r *Runner) Queued() int {
	q := r.fq.Load()
	if q == nil {
		return 0
	}
	return len(q.waiting(false))
}

// runFair is Run with WithFairness: one puller fills the queue, the workers
// take from it round-robin, and a keeper keeps the waiting messages alive.
func (r *Runner) runFair(pull, work context.Context) {
	ahead := r.cfg.fair.ahead
	if maxPending := r.consumer.CachedInfo().Config.MaxAckPending; maxPending > 0 && (ahead <= 0 || ahead > maxPending) {
		// The server delivers no more than this un-acked: asking for more
		// would only wait.
		ahead = maxPending
	}
	if ahead <= 0 {
		ahead = 1000
	}
	q := newFairQueue(ahead, r.cfg.fair.aheadBytes)
	r.fq.Store(q)
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		r.pullAhead(pull, work, q)
	}()
	go func() {
		defer wg.Done()
		r.keepQueuedAlive(pull, q)
	}()
	// The workers, and a spare per slot a handler lends while it waits
	// (Idle): a waiting handler keeps its message, not the stage.
	r.runWorkers(pull, func() {
		for pull.Err() == nil {
			if r.slots.surplus() {
				return // a spare whose loan ended
			}
			it := q.pop(pull)
			if it == nil {
				return
			}
			r.process(work, it.jm)
			q.done(it)
		}
	})
	wg.Wait()
}

// pullAhead fetches while there is room, queueing (or refusing) what comes.
// When pulling stops it hands the waiting messages back.
func (r *Runner) pullAhead(pull, work context.Context, q *fairQueue) {
	defer r.handBack(q)
	for pull.Err() == nil {
		if r.drift.Load() != nil {
			// A rewritten consumer may hand out another stage's work (or
			// none): take nothing more from it until the operator restores it.
			sleep(pull, r.cfg.fetchWait)
			continue
		}
		n := q.room()
		if n == 0 {
			select {
			case <-pull.Done():
				return
			case <-q.space:
			}
			continue
		}
		// A bounded wait rather than the pull context (see worker).
		batch, err := r.consumer.Fetch(min(n, 256), jetstream.FetchMaxWait(r.cfg.fetchWait))
		if err == nil {
			for jm := range batch.Messages() {
				r.enqueue(work, q, jm)
			}
			err = batch.Error()
		}
		if err != nil && !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
			if pull.Err() != nil {
				return
			}
			r.pullFailed(pull, err)
			continue
		}
		r.pulling()
	}
}

// enqueue queues one pulled message, or refuses it when its key is full.
func (r *Runner) enqueue(ctx context.Context, q *fairQueue, jm jetstream.Msg) {
	m := messageOf(jm)
	it := &queued{jm: jm, key: r.cfg.fair.key(m), n: len(m.Data) + len(m.Subject)}
	held, ok := q.push(it, r.cfg.fair.perKey)
	if ok {
		return
	}
	refusal := fmt.Errorf("%w: %q holds %d messages (limit %d)", ErrQueueFull, it.key, held, r.cfg.fair.perKey)
	if r.cfg.fair.refusal != nil {
		refusal = r.cfg.fair.refusal(it.key, r.cfg.fair.perKey)
	}
	log := r.cfg.logger.With("stage", r.name, "subject", m.Subject, "delivery", m.Delivery, "key", it.key)
	log.Warn("refused: over the limit", "err", refusal)
	start := time.Now()
	r.cfg.observer.Started(r.name, m.Delivery)
	outcome := r.fail(ctx, jm, m, Permanent(refusal), OutcomePermanent, log)
	r.cfg.observer.Settled(r.name, outcome, time.Since(start))
}

// keepQueuedAlive sends in-progress acks for the waiting messages every
// third of the ack wait, until pulling stops.
func (r *Runner) keepQueuedAlive(pull context.Context, q *fairQueue) {
	t := time.NewTicker(r.cfg.ackWait / 3)
	defer t.Stop()
	kl := keepAliveLog{every: r.cfg.ackWait}
	for {
		select {
		case <-pull.Done():
			return
		case <-t.C:
		}
		var failed error
		for _, it := range q.waiting(false) {
			// One a worker took meanwhile may be acked already: that error
			// is harmless.
			if err := it.jm.InProgress(); err != nil && !errors.Is(err, jetstream.ErrMsgAlreadyAckd) {
				failed = err
			}
		}
		if n, ok := kl.note(failed, time.Now()); ok && failed != nil {
			r.cfg.logger.Warn("keep-alive of queued messages failed: after the ack wait the server may give them to another worker",
				"stage", r.name, "err", failed, "consecutive_failures", n)
		} else if ok {
			r.cfg.logger.Info("keep-alive of queued messages works again", "stage", r.name)
		}
	}
}

// handBack naks the messages no worker took, so that another process gets
// them now rather than after the ack wait.
func (r *Runner) handBack(q *fairQueue) {
	left := q.waiting(true)
	for _, it := range left {
		if err := it.jm.Nak(); err != nil {
			r.cfg.logger.Warn("nak failed", "stage", r.name, "err", err)
		}
	}
	if len(left) > 0 {
		r.cfg.logger.Info("stopping: handed back the queued messages", "stage", r.name, "count", len(left))
		if r.conn != nil {
			_ = r.conn.FlushTimeout(2 * time.Second)
		}
	}
}
