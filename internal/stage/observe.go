package stage

import (
	"time"
)

// Outcome is how the runner settled one delivery.
type Outcome string

// Outcomes of a delivery.
const (
	// OutcomeOK: the handler succeeded and its events were handed on.
	OutcomeOK Outcome = "ok"
	// OutcomeRetry: the message goes back for another delivery after a
	// backoff (a transient error, or a hand-off that could not be published).
	OutcomeRetry Outcome = "retry"
	// OutcomePermanent: the handler said retrying cannot help; the failure
	// policy ended the message.
	OutcomePermanent Outcome = "permanent"
	// OutcomeExhausted: transient failures used up the deliveries allowed
	// (or its workers kept dying); the failure policy ended the message.
	OutcomeExhausted Outcome = "exhausted"
	// OutcomePoison: the message could not be processed at all (unreadable,
	// or the handler panicked); it became a dead letter.
	OutcomePoison Outcome = "poison"
	// OutcomeDrained: the process was stopping; the message was handed back
	// unfinished.
	OutcomeDrained Outcome = "drained"
)

// Observer hears what a Runner does with each delivery, for metrics. Its
// methods are called from the workers' goroutines and must be quick and safe
// for concurrent use. A process with several stages passes one Observer to
// each Runner; the stage name tells them apart.
type Observer interface {
	// Started is called when a worker begins on a delivery (delivery counts
	// from 1; more than 1 is a redelivery).
	Started(stage string, delivery int)
	// Settled is called once the delivery is settled, with how and how long
	// it took since Started.
	Settled(stage string, outcome Outcome, elapsed time.Duration)
	// DeadLettered is called when a dead letter was published.
	DeadLettered(stage string)
}

// WithObserver reports every delivery to o (default: nobody).
func WithObserver(o Observer) Option {
	return func(c *config) {
		if o != nil {
			c.observer = o
		}
	}
}

type nopObserver struct{}

func (nopObserver) Started(string, int)                    {}
func (nopObserver) Settled(string, Outcome, time.Duration) {}
func (nopObserver) DeadLettered(string)                    {}

// Consuming reports whether the runner is serving and its most recent pull
// reached the consumer (a message or an empty wait). It is false before Run,
// after Run returns, while pulls fail (the server is away, or the durable
// consumer was deleted), and while its consumer drifted (see Drift): what a liveness probe wants to know.
func (r *Runner) Consuming() bool {
	return r.running.Load() && r.pullOK.Load() && r.drift.Load() == nil
}

// Name is the stage's name (its durable consumer's).
func (r *Runner) Name() string { return r.name }
