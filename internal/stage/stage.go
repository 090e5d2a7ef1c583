// Package stage is the one place that knows how a JetStream message is consumed,
// kept alive, acknowledged, retried and handed on. A stage is a Handler: a plain
// function from one message to the events to publish next. Retry, failure and
// dead-letter handling are policy, declared once when the Runner is built.
//
// Delivery contract:
//   - one durable pull consumer per stage, shared by every worker of the stage in
//     every process; each worker pulls one message only when it is free — or,
//     WithFairness, the process pulls a bounded number ahead and its workers
//     take them round-robin across keys (tenants), see fair.go;
//   - while a handler runs, the runner sends in-progress acks every AckWait/3, so
//     long work is never redelivered while its worker lives, and a dead worker's
//     message comes back after AckWait;
//   - the next events are published with deterministic Nats-Msg-Id headers and
//     their publish acks awaited before the input is acknowledged, so a crash
//     between the two repeats the hand-off (deduplicated) rather than losing it;
//   - a transient error is retried with backoff up to MaxDeliver deliveries, then
//     the Failure policy turns it into final events; a permanent error goes to the
//     Failure policy at once; an unreadable message or a handler panic becomes a
//     dead letter with the reason, and the worker keeps serving;
//   - events that cannot be published (the hand-off, or the failure events) are
//     retried too, but not forever: MaxDeliver plus a crash allowance later a
//     refused hand-off becomes a failure, and a refused failure a dead letter.
package stage

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/pkg/messages"
)

// Message is one delivery handed to a Handler.
type Message struct {
	Subject string
	Data    []byte
	Header  nats.Header
	// Delivery counts deliveries of this message, starting at 1.
	Delivery int
	// Sequence is the message's sequence in its stream (0 if unknown): it
	// tells two messages with the same content apart.
	Sequence uint64
	// writer reads who wrote it (Writer; WithWriters).
	writer func(context.Context) (string, error)
}

// Event is one message to publish. ID becomes the Nats-Msg-Id header: it must be
// deterministic (derived from the input) so a repeated hand-off is deduplicated.
type Event struct {
	Subject string
	Data    []byte
	ID      string
	// Writer, if set, becomes the HeaderWriter marker: readers take the
	// message as this role's only with it (messages.FromResultsWriter,
	// Message.Writer).
	Writer string
}

// Handler does one stage's step. It returns the events to publish next, or an
// error: plain errors are retried, Permanent ones fail at once, Poison ones
// become dead letters.
type Handler func(ctx context.Context, msg Message) ([]Event, error)

// FailureFunc turns a message that will not be retried any more into the final
// events that tell its requester (for example a failed asset event). It may
// return nil when the message cannot be attributed to anyone.
type FailureFunc func(msg Message, err error) []Event

// DeadLetterFunc builds the dead-letter event for a message that could not be
// processed at all.
type DeadLetterFunc func(msg Message, reason string) Event

type permanentError struct{ err error }

func (e *permanentError) Error() string { return e.err.Error() }
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as not worth retrying.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err (or anything it wraps) was marked Permanent or Poison.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p) || IsPoison(err)
}

type poisonError struct{ err error }

func (e *poisonError) Error() string { return e.err.Error() }
func (e *poisonError) Unwrap() error { return e.err }

// Poison marks a message as unprocessable (malformed, unknown version): it is
// dead-lettered, and the failure policy still runs so a requester hears of it.
func Poison(err error) error {
	if err == nil {
		return nil
	}
	return &poisonError{err: err}
}

// IsPoison reports whether err was marked Poison.
func IsPoison(err error) bool {
	var p *poisonError
	return errors.As(err, &p)
}

// Publisher publishes one event and waits for the stream's acknowledgement.
type Publisher interface {
	Publish(ctx context.Context, ev Event) error
}

// Runner pulls messages for one stage and runs its Handler.
type Runner struct {
	conn     *nats.Conn
	name     string
	consumer jetstream.Consumer
	pub      Publisher
	handler  Handler
	cfg      config
	// running and pullOK say whether the runner is consuming (Consuming).
	running atomic.Bool
	pullOK  atomic.Bool
	// fq is the fair queue while a fair runner runs.
	fq atomic.Pointer[fairQueue]
	// drift is the last drift check's finding (*DriftError), or nil.
	drift   atomic.Pointer[DriftError]
	filters []string
	stream  string
	// slots counts workers and the slots idle handlers lend (see Idle).
	slots slots
}

type config struct {
	moreFilters   []string
	concurrency   int
	ackWait       time.Duration
	maxDeliver    int
	backoff       func() backoff.BackOff
	failure       FailureFunc
	deadLetter    DeadLetterFunc
	logger        *slog.Logger
	drainTimeout  time.Duration
	fetchWait     time.Duration
	publishTimout time.Duration
	observer      Observer
	retryNotify   func(Retry)
	fair          *fairConfig
	driftCheck    time.Duration
	writers       bool
}

// Option configures a Runner.
type Option func(*config)

// WithConcurrency sets how many messages this process works on at once (default 1).
func WithConcurrency(n int) Option {
	return func(c *config) {
		if n > 0 {
			c.concurrency = n
		}
	}
}

// WithAckWait sets how long a delivery may go unacknowledged before the server
// redelivers it (default 30s). In-progress acks are sent every third of it.
func WithAckWait(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.ackWait = d
		}
	}
}

// WithMaxDeliver bounds deliveries of one message before it fails (default 5).
func WithMaxDeliver(n int) Option {
	return func(c *config) {
		if n > 0 {
			c.maxDeliver = n
		}
	}
}

// WithBackoff sets the retry delay policy; the n-th redelivery waits for the n-th
// interval of a fresh BackOff from newBackOff.
func WithBackoff(newBackOff func() backoff.BackOff) Option {
	return func(c *config) { c.backoff = newBackOff }
}

// WithMoreSubjects makes the stage consume these subjects as well as its filter.
func WithMoreSubjects(subjects ...string) Option {
	return func(c *config) { c.moreFilters = append(c.moreFilters, subjects...) }
}

// Retry describes a delivery that failed transiently and goes back to be
// delivered again (see WithRetryNotify).
type Retry struct {
	Message Message
	Err     error
	// In is how long until the next delivery; Next is its number, of Max
	// deliveries allowed.
	In        time.Duration
	Next, Max int
}

// WithRetryNotify calls fn (from the worker; return quickly) for each
// delivery that failed transiently and will be delivered again, before it is
// handed back: whoever waits for the work can be told what is being retried,
// why, and when.
func WithRetryNotify(fn func(Retry)) Option { return func(c *config) { c.retryNotify = fn } }

// WithFailure sets the policy for messages that will not be retried any more.
func WithFailure(f FailureFunc) Option { return func(c *config) { c.failure = f } }

// WithDeadLetter sets how dead letters are built.
func WithDeadLetter(f DeadLetterFunc) Option { return func(c *config) { c.deadLetter = f } }

// WithLogger sets the logger.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) {
		if l != nil {
			c.logger = l
		}
	}
}

// WithPullWait sets how long one pull waits for a message (default 2s). It is
// also how long a drain may wait for the pull in progress: a short-lived
// process (vmprep prepare) uses a short one.
func WithPullWait(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.fetchWait = d
		}
	}
}

// WithDriftCheck sets how often the runner checks that its consumer is
// still as it was made (default 30s; see ConsumerDrift).
func WithDriftCheck(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.driftCheck = d
		}
	}
}

// WithDrainTimeout bounds how long in-flight work may continue after Run's
// context ends (default 30s); work still running then is cancelled and nak'ed.
func WithDrainTimeout(d time.Duration) Option { return func(c *config) { c.drainTimeout = d } }

// DefaultBackoff is exponential with jitter: about 1s, 2s, 4s … capped at 30s.
func DefaultBackoff() backoff.BackOff { return Exponential(time.Second, 30*time.Second, 0.5) }

// Exponential is a retry policy for WithBackoff: initial, doubling up to
// maxInterval, each interval randomized by ±jitter (0 to 1), never giving up
// (the runner's MaxDeliver does).
func Exponential(initial, maxInterval time.Duration, jitter float64) backoff.BackOff {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = initial
	b.Multiplier = 2
	b.MaxInterval = maxInterval
	b.RandomizationFactor = jitter
	b.MaxElapsedTime = 0
	b.Reset() // the constructor reset with its own defaults; start from ours
	return b
}

// crashAllowance is how many deliveries beyond MaxDeliver a message may take
// without its handler ever returning (its worker was drained, killed or
// crashed) before the runner gives up on it without running the handler.
const crashAllowance = 10

// ConsumerConfig is the durable consumer every worker of a stage shares. The
// server never stops redelivering (MaxDeliver -1): the runner decides when a
// message has had enough deliveries and ends it with a failure event, so a
// request always gets an answer.
func ConsumerConfig(name string, filters []string, ackWait time.Duration) jetstream.ConsumerConfig {
	c := jetstream.ConsumerConfig{
		Durable:       name,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       ackWait,
		MaxDeliver:    -1,
		MaxAckPending: 1000,
	}
	if ackWait > 0 {
		c.Metadata = map[string]string{MetaAckWait: ackWait.String()}
	}
	if len(filters) == 1 {
		c.FilterSubject = filters[0]
	} else {
		c.FilterSubjects = filters
	}
	return c
}

// consumerFilters are the subjects a consumer config filters on.
func consumerFilters(c jetstream.ConsumerConfig) []string {
	if c.FilterSubject != "" {
		return []string{c.FilterSubject}
	}
	return c.FilterSubjects
}

// bindConsumer returns the stage's durable consumer, creating it if absent.
// The first process to create it sets its ack wait; later processes adopt the
// server's value, so that every worker's keep-alive matches what the server
// enforces.
func bindConsumer(ctx context.Context, js jetstream.JetStream, stream, name string, filters []string, cfg *config) (jetstream.Consumer, error) {
	for attempt := 0; attempt < 3; attempt++ {
		cons, err := js.Consumer(ctx, stream, name)
		if errors.Is(err, jetstream.ErrNotPullConsumer) {
			// Made a push consumer: it would relay the stage's work to its
			// deliver subject.
			if got, cerr := consumerConfig(ctx, js, stream, name); cerr == nil {
				return nil, &DriftError{Stream: stream, Consumer: name, Drift: ConsumerDrift(name, filters, got)}
			}
		}
		if errors.Is(err, jetstream.ErrConsumerNotFound) {
			err = Create(ctx, js.Conn(), "consumer "+name+" of stream "+stream, "$JS.API.CONSUMER.CREATE."+stream+"."+name, func(ctx context.Context) (err error) {
				cons, err = js.CreateConsumer(ctx, stream, ConsumerConfig(name, filters, cfg.ackWait))
				return err
			})
			if errors.Is(err, jetstream.ErrConsumerExists) {
				continue // another process created it first: adopt it
			}
		}
		if err != nil {
			return nil, err
		}
		info := cons.CachedInfo()
		if got := consumerFilters(info.Config); !sameSet(got, filters) {
			// What the stage consumes is the build's business (a newer build
			// consumes more subjects): update the filters, nothing else.
			upd := info.Config
			upd.FilterSubject, upd.FilterSubjects = "", nil
			if len(filters) == 1 {
				upd.FilterSubject = filters[0]
			} else {
				upd.FilterSubjects = filters
			}
			denied, err := Call(ctx, js.Conn(), "$JS.API.CONSUMER.CREATE."+stream+"."+name, func(ctx context.Context) (err error) {
				cons, err = js.UpdateConsumer(ctx, stream, upd)
				return err
			})
			if err != nil {
				if denied {
					// Not this stage's to repair: the operator's setup does.
					return nil, &DriftError{Stream: stream, Consumer: name, Drift: ConsumerDrift(name, filters, info.Config)}
				}
				return nil, fmt.Errorf("consumer %s filters %q, want %q: update: %w", name, got, filters, err)
			}
			cfg.logger.Warn("updated the consumer's subjects", "stage", name, "from", got, "to", filters)
			info = cons.CachedInfo()
		}
		// Anything else changed is not this stage's to undo: someone who
		// could rewrite it once can again, and only the operator can tell.
		if d := ConsumerDrift(name, filters, info.Config); len(d) > 0 {
			return nil, &DriftError{Stream: stream, Consumer: name, Drift: d}
		}
		if got := info.Config.AckWait; got > 0 && got != cfg.ackWait {
			cfg.logger.Warn("using the existing consumer's ack wait; delete the consumer to change it",
				"stage", name, "ack_wait", got, "requested", cfg.ackWait)
			cfg.ackWait = got
		}
		return cons, nil
	}
	return nil, fmt.Errorf("consumer %s: created and deleted concurrently", name)
}

// DefaultAckWait is the ack wait of a stage consumer made without one chosen.
const DefaultAckWait = 30 * time.Second

// EnsureConsumer is the operator's side of a stage consumer: it creates the
// durable consumer name of a stage on stream (filtering filters) if it is
// missing, and restores one that drifted from what it makes (see
// ConsumerDrift) — an update where the server allows one, else a delete and
// create (the work stays in the stream: a work queue keeps a message until
// it is acknowledged). ackWait, if positive, is set and recorded (see
// MetaAckWait); 0 keeps the ack wait recorded when the consumer was made
// (made by an older build: the one it has), DefaultAckWait for a new one.
func EnsureConsumer(ctx context.Context, js jetstream.JetStream, stream, name string, filters []string, ackWait time.Duration, log *slog.Logger) error {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	create := func() error {
		wait := ackWait
		if wait <= 0 {
			wait = DefaultAckWait
		}
		return Create(ctx, js.Conn(), "consumer "+name+" of stream "+stream, "$JS.API.CONSUMER.CREATE."+stream+"."+name, func(ctx context.Context) error {
			_, err := js.CreateConsumer(ctx, stream, ConsumerConfig(name, filters, wait))
			return err
		})
	}
	got, err := consumerConfig(ctx, js, stream, name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		if err := create(); err != nil && !errors.Is(err, jetstream.ErrConsumerExists) {
			return err
		}
		return nil
	}
	if err != nil {
		return err
	}
	keep := got.AckWait
	if s, ok := got.Metadata[MetaAckWait]; ok {
		if d, perr := time.ParseDuration(s); perr == nil && d > 0 {
			keep = d
		}
	}
	if ackWait > 0 {
		keep = ackWait
	}
	if keep <= 0 {
		keep = DefaultAckWait
	}
	drift := ConsumerDrift(name, filters, got)
	if len(drift) == 0 && got.Metadata[MetaAckWait] == keep.String() {
		return nil
	}
	want := ConsumerConfig(name, filters, keep)
	if want.Metadata == nil {
		want.Metadata = map[string]string{}
	}
	// Keep what the server or an operator set that is not drift.
	want.Replicas, want.Description = got.Replicas, got.Description
	for k, v := range got.Metadata {
		if k != MetaAckWait {
			want.Metadata[k] = v
		}
	}
	if _, err := js.UpdateConsumer(ctx, stream, want); err != nil {
		// A setting the server will not update (deliver policy, a push
		// deliver subject, …): make it again.
		log.Warn("consumer cannot be updated back; deleting and creating it again", "consumer", name, "drift", drift, "err", err)
		if derr := js.DeleteConsumer(ctx, stream, name); derr != nil && !errors.Is(derr, jetstream.ErrConsumerNotFound) {
			return fmt.Errorf("consumer %s differs from what setup makes (%s): update: %v; delete: %w", name, strings.Join(drift, "; "), err, derr)
		}
		if _, err := js.CreateConsumer(ctx, stream, want); err != nil {
			return fmt.Errorf("consumer %s: create again: %w", name, err)
		}
	}
	if len(drift) > 0 {
		log.Warn("restored a consumer that had been changed", "consumer", name, "drift", drift)
	}
	return nil
}

// New creates (or updates) the stage's durable consumer on stream and returns a
// Runner for it. filter is the subject the stage consumes (WithMoreSubjects
// adds others).
func New(ctx context.Context, js jetstream.JetStream, stream, name, filter string, h Handler, opts ...Option) (*Runner, error) {
	cfg := config{
		concurrency:   1,
		ackWait:       30 * time.Second,
		maxDeliver:    5,
		backoff:       DefaultBackoff,
		logger:        slog.Default(),
		drainTimeout:  30 * time.Second,
		fetchWait:     2 * time.Second,
		publishTimout: 30 * time.Second,
		observer:      nopObserver{},
		driftCheck:    30 * time.Second,
	}
	for _, o := range opts {
		o(&cfg)
	}
	filters := append([]string{filter}, cfg.moreFilters...)
	cons, err := bindConsumer(ctx, js, stream, name, filters, &cfg)
	if err != nil {
		return nil, fmt.Errorf("stage %s: create consumer on %s: %w", name, stream, err)
	}
	r := &Runner{
		conn:     js.Conn(),
		name:     name,
		consumer: cons,
		pub:      JetStreamPublisher{JS: js},
		handler:  h,
		cfg:      cfg,
		filters:  filters,
		stream:   stream,
	}
	r.noteDrift(name, nil)
	r.pullOK.Store(true) // the consumer was just bound
	return r, nil
}

// JetStreamPublisher publishes events to JetStream with Nats-Msg-Id set.
type JetStreamPublisher struct{ JS jetstream.JetStream }

// Publish implements Publisher.
func (p JetStreamPublisher) Publish(ctx context.Context, ev Event) error {
	var opts []jetstream.PublishOpt
	if ev.ID != "" {
		opts = append(opts, jetstream.WithMsgID(ev.ID))
	}
	m := nats.NewMsg(ev.Subject)
	m.Data = ev.Data
	if ev.Writer != "" {
		m.Header.Set(HeaderWriter, ev.Writer)
	}
	_, err := p.JS.PublishMsg(ctx, m, opts...)
	return err
}

// Run serves until ctx ends, then drains: it stops pulling, lets in-flight work
// finish within the drain timeout and naks what is still running. It returns
// once every worker has stopped.
func (r *Runner) Run(ctx context.Context) {
	// work outlives ctx by the drain timeout.
	work, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	stopDrain := context.AfterFunc(ctx, func() {
		t := time.NewTimer(r.cfg.drainTimeout)
		defer t.Stop()
		select {
		case <-t.C:
			cancelWork()
		case <-work.Done():
		}
	})
	defer stopDrain()

	r.running.Store(true)
	defer r.running.Store(false)
	// The consumer is checked against what setup made for as long as the
	// runner pulls, whichever way it schedules.
	var watch sync.WaitGroup
	watch.Add(1)
	go func() {
		defer watch.Done()
		r.watchDrift(ctx)
	}()
	defer watch.Wait()
	if r.cfg.fair != nil {
		r.runFair(ctx, work)
		return
	}
	r.runWorkers(ctx, func() { r.worker(ctx, work) })
}

// runWorkers runs concurrency workers (each running body until it returns)
// and, while handlers wait in Idle, a spare worker per lent slot. It returns
// once ctx has ended and every worker has stopped.
func (r *Runner) runWorkers(ctx context.Context, body func()) {
	s := &r.slots
	s.mu.Lock()
	s.limit, s.workers, s.spawning = r.cfg.concurrency, r.cfg.concurrency, true
	s.spawn = func() {
		defer s.wg.Done()
		body()
	}
	s.wg.Add(r.cfg.concurrency)
	s.mu.Unlock()
	for i := 0; i < r.cfg.concurrency; i++ {
		go s.spawn()
	}
	<-ctx.Done()
	s.mu.Lock()
	s.spawning = false // no spare worker starts once draining
	s.mu.Unlock()
	s.wg.Wait()
}

func (r *Runner) worker(pull, work context.Context) {
	for pull.Err() == nil {
		if r.slots.surplus() {
			return // a spare whose loan ended
		}
		if r.drift.Load() != nil {
			// A rewritten consumer may hand out another stage's work (or
			// none): take nothing from it until the operator restores it.
			sleep(pull, r.cfg.fetchWait)
			continue
		}
		// A bounded wait rather than the pull context: cancelling a pull can drop
		// a message the server is delivering at that moment, which would then sit
		// out the ack wait. A message that arrives while draining is handled.
		msg, err := r.consumer.Next(jetstream.FetchMaxWait(r.cfg.fetchWait))
		if err != nil {
			if pull.Err() != nil {
				return
			}
			if !errors.Is(err, nats.ErrTimeout) && !errors.Is(err, context.DeadlineExceeded) {
				r.pullFailed(pull, err)
				continue
			}
			r.pulling()
			continue
		}
		r.pulling()
		r.process(work, msg)
	}
}

// pullFailed logs a failed pull and waits before the next: every worker
// retries twice a second while NATS is away, so one warning per outage (and
// one line when it ends, see pulling), the rest at debug.
func (r *Runner) pullFailed(pull context.Context, err error) {
	if r.pullOK.Swap(false) {
		r.cfg.logger.Warn("pull failed; retrying", "stage", r.name, "err", err)
	} else {
		r.cfg.logger.Debug("pull failed; retrying", "stage", r.name, "err", err)
	}
	sleep(pull, 500*time.Millisecond)
}

// pulling records a pull that reached the consumer, and says so once after
// pulls failed.
func (r *Runner) pulling() {
	if !r.pullOK.Swap(true) {
		r.cfg.logger.Info("pulling again", "stage", r.name)
	}
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// process runs the handler on one delivery and settles it.
func (r *Runner) process(ctx context.Context, jm jetstream.Msg) {
	m := messageOf(jm)
	if r.cfg.writers {
		m.writer = storedWriter(r.conn, r.stream, m)
	}
	log := r.cfg.logger.With("stage", r.name, "subject", m.Subject, "delivery", m.Delivery)
	if id, ok := messages.PeekRequestID(m.Data); ok {
		log = log.With("request_id", id)
	}
	start := time.Now()
	r.cfg.observer.Started(r.name, m.Delivery)
	outcome := OutcomeRetry
	defer func() { r.cfg.observer.Settled(r.name, outcome, time.Since(start)) }()

	// The keep-alive runs until the message is settled: publishing the hand-off
	// can take a while during a reconnect or leader election.
	stopKeepAlive := r.keepAlive(jm, log)
	defer stopKeepAlive()

	if m.Delivery > r.cfg.maxDeliver+crashAllowance {
		// Its workers never finished it: each was drained, killed or crashed.
		log.Error("giving up without running the handler", "max", r.cfg.maxDeliver)
		outcome = r.fail(ctx, jm, m, fmt.Errorf("gave up after %d deliveries: the workers handling it stopped or crashed each time", m.Delivery), OutcomeExhausted, log)
		return
	}
	hctx, cancel := context.WithCancel(context.WithValue(ctx, slotsKey{}, &r.slots))
	events, err := r.call(hctx, m, log)
	cancel()

	switch {
	case err == nil:
		if perr := r.publish(ctx, events); perr != nil {
			if m.Delivery >= r.cfg.maxDeliver+crashAllowance {
				// The next stage's subject refuses every time (a permission
				// missing, a stream without it): tell the requester instead.
				log.Error("giving up on the hand-off", "err", perr)
				outcome = r.fail(ctx, jm, m, fmt.Errorf("handing on the result failed %d times: %w", m.Delivery, perr), OutcomeExhausted, log)
				return
			}
			log.Warn("hand-off failed; will retry", "err", perr)
			r.nak(jm, m, log)
			return
		}
		outcome = OutcomeOK
		if aerr := jm.DoubleAck(ctx); aerr != nil {
			// The events are out with deterministic ids; a redelivery repeats them harmlessly.
			log.Warn("ack failed", "err", aerr)
		}
	case ctx.Err() != nil:
		// Draining: give the message to another worker now.
		outcome = OutcomeDrained
		log.Info("drained before completion; returning message", "err", err)
		if err := jm.Nak(); err != nil {
			log.Warn("nak failed", "err", err)
		}
		// The process may exit right after draining: make sure the nak is out,
		// or the message would wait for the ack wait to expire.
		if r.conn != nil {
			_ = r.conn.FlushTimeout(2 * time.Second)
		}
	case IsPoison(err):
		log.Error("dead letter", "reason", err)
		outcome = r.fail(ctx, jm, m, err, OutcomePoison, log)
	case IsPermanent(err):
		log.Warn("permanent failure", "err", err)
		outcome = r.fail(ctx, jm, m, err, OutcomePermanent, log)
	case m.Delivery >= r.cfg.maxDeliver:
		log.Warn("giving up after max deliveries", "max", r.cfg.maxDeliver, "err", err)
		outcome = r.fail(ctx, jm, m, fmt.Errorf("gave up after %d attempts: %w", m.Delivery, err), OutcomeExhausted, log)
	default:
		delay := r.retryDelay(m.Delivery)
		log.Info("transient failure; will retry", "err", err, "in", delay)
		if r.cfg.retryNotify != nil {
			r.cfg.retryNotify(Retry{Message: m, Err: err, In: delay, Next: m.Delivery + 1, Max: r.cfg.maxDeliver})
		}
		r.nakWithDelay(jm, delay, log)
	}
}

// messageOf is the Message of one delivery.
func messageOf(jm jetstream.Msg) Message {
	m := Message{Subject: jm.Subject(), Data: jm.Data(), Header: jm.Headers(), Delivery: 1}
	if md, err := jm.Metadata(); err == nil {
		m.Delivery, m.Sequence = int(md.NumDelivered), md.Sequence.Stream
	}
	return m
}

// call runs the handler, turning a panic into a Poison error.
func (r *Runner) call(ctx context.Context, m Message, log *slog.Logger) (events []Event, err error) {
	defer func() {
		if p := recover(); p != nil {
			log.Error("handler panic", "panic", p, "stack", string(debug.Stack()))
			events, err = nil, Poison(fmt.Errorf("handler panic: %v", p))
		}
	}()
	return r.handler(ctx, m)
}

// keepAlive sends in-progress acks until the returned func is called. Failed
// ones are logged (see keepAliveLog): while they fail, the server will hand
// the message to another worker once the ack wait passes.
func (r *Runner) keepAlive(jm jetstream.Msg, log *slog.Logger) func() {
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(r.cfg.ackWait / 3)
		defer t.Stop()
		kl := keepAliveLog{every: r.cfg.ackWait}
		for {
			select {
			case <-done:
				return
			case <-t.C:
				err := jm.InProgress()
				if n, ok := kl.note(err, time.Now()); ok && err != nil {
					log.Warn("keep-alive failed: after the ack wait the server may give this message to another worker",
						"err", err, "consecutive_failures", n, "ack_wait", r.cfg.ackWait)
				} else if ok {
					log.Info("keep-alive works again", "consecutive_failures", n)
				}
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// keepAliveLog decides which keep-alive outcomes are worth a log line, so
// that a connection that stays down yields a line per `every` rather than one
// per tick: the first failure, then one line per `every` while they go on,
// and the first success after them.
type keepAliveLog struct {
	every  time.Duration
	streak int       // consecutive failures
	last   time.Time // of the last failure line
}

// note records one outcome and says whether to log it, with the number of
// consecutive failures so far (for a success: the ones it ends).
func (k *keepAliveLog) note(err error, now time.Time) (streak int, log bool) {
	if err == nil {
		streak, k.streak = k.streak, 0
		return streak, streak > 0
	}
	k.streak++
	if k.streak > 1 && now.Sub(k.last) < k.every {
		return k.streak, false
	}
	k.last = now
	return k.streak, true
}

func (r *Runner) publish(ctx context.Context, events []Event) error {
	for _, ev := range events {
		pctx, cancel := context.WithTimeout(ctx, r.cfg.publishTimout)
		err := r.pub.Publish(pctx, ev)
		cancel()
		if err != nil {
			return fmt.Errorf("publish %s (id %q): %w", ev.Subject, ev.ID, err)
		}
	}
	return nil
}

func (r *Runner) nak(jm jetstream.Msg, m Message, log *slog.Logger) {
	r.nakWithDelay(jm, r.retryDelay(m.Delivery), log)
}

// retryDelay is how long the delivery-th delivery's retry waits: the n-th
// interval of a fresh backoff.
func (r *Runner) retryDelay(delivery int) time.Duration {
	b := r.cfg.backoff()
	delay := time.Second
	for i := 0; i < delivery; i++ {
		if d := b.NextBackOff(); d != backoff.Stop {
			delay = d
		}
	}
	return delay
}

func (r *Runner) nakWithDelay(jm jetstream.Msg, delay time.Duration, log *slog.Logger) {
	if err := jm.NakWithDelay(delay); err != nil {
		log.Warn("nak failed", "err", err)
	}
}

// fail publishes the failure events (which tell the requester) and, for
// poison, the dead letter, then ends the message. If the failure events cannot
// be published the message is retried instead, so a requester is never left
// without an answer — until crashAllowance deliveries past MaxDeliver: a
// failure subject that refuses every time (a permission missing) would
// otherwise keep the message forever, so it becomes a dead letter that names
// both errors. A dead letter is best effort. It returns the outcome: the one
// asked for, OutcomePoison, or OutcomeRetry.
func (r *Runner) fail(ctx context.Context, jm jetstream.Msg, m Message, err error, outcome Outcome, log *slog.Logger) Outcome {
	if r.cfg.failure != nil {
		if perr := r.publish(ctx, r.cfg.failure(m, err)); perr != nil {
			if m.Delivery < r.cfg.maxDeliver+crashAllowance {
				log.Warn("could not publish failure; will retry", "err", perr)
				r.nak(jm, m, log)
				return OutcomeRetry
			}
			log.Error("could not publish failure; giving up: dead letter", "err", perr, "failure", err)
			err, outcome = fmt.Errorf("its failure could not be published after %d deliveries (%v): %w", m.Delivery, perr, err), OutcomePoison
		}
	}
	if outcome == OutcomePoison && r.cfg.deadLetter != nil {
		if perr := r.publish(ctx, []Event{r.cfg.deadLetter(m, err.Error())}); perr != nil {
			log.Error("could not publish dead letter; dropping the message", "err", perr, "reason", err, "bytes", len(m.Data))
		} else {
			r.cfg.observer.DeadLettered(r.name)
		}
	}
	reason := err.Error()
	if len(reason) > 256 {
		reason = reason[:256]
	}
	if terr := jm.TermWithReason(reason); terr != nil {
		log.Warn("term failed", "err", terr)
	}
	return outcome
}

// sameSet reports whether a and b hold the same strings.
func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, x := range a {
		seen[x]++
	}
	for _, x := range b {
		if seen[x] == 0 {
			return false
		}
		seen[x]--
	}
	return true
}
