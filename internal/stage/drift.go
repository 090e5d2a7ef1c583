package stage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// MetaAckWait is the consumer metadata key where the creator of a stage
// consumer records the ack wait it chose (the operator's `vmprep setup
// --ack-wait`), so that a later check can tell a chosen ack wait from a
// changed one.
const MetaAckWait = "vmprep_ack_wait"

// defaultMaxWaiting is the server's max_waiting for a pull consumer that
// does not set it.
const defaultMaxWaiting = 512

// ConsumerDrift lists how got, a stage consumer's configuration on the
// server, differs from what its creator made (ConsumerConfig with the
// consumer's filters): a consumer rewritten by someone else — a filter that
// no longer takes the stage's work, a pause, a push deliver subject, an
// expiry — stalls or diverts the stage's work while the stage itself looks
// healthy. Settings an operator may choose (replicas, the ack wait recorded
// in MetaAckWait) are not drift. Empty means as made.
func ConsumerDrift(name string, filters []string, got jetstream.ConsumerConfig) []string {
	want := ConsumerConfig(name, filters, 0)
	var d []string
	diff := func(what string, have, expect any) {
		d = append(d, fmt.Sprintf("%s is %v, setup makes %v", what, have, expect))
	}
	if f := consumerFilters(got); !sameSet(f, filters) {
		diff("filter subjects", quoteAll(f), quoteAll(filters))
	}
	if got.DeliverPolicy != want.DeliverPolicy {
		diff("deliver policy", got.DeliverPolicy, want.DeliverPolicy)
	}
	if got.OptStartSeq != 0 || got.OptStartTime != nil {
		diff("start position", fmt.Sprintf("seq %d time %v", got.OptStartSeq, got.OptStartTime), "none")
	}
	if got.AckPolicy != want.AckPolicy {
		diff("ack policy", got.AckPolicy, want.AckPolicy)
	}
	if s, ok := got.Metadata[MetaAckWait]; ok {
		if chosen, err := time.ParseDuration(s); err != nil || chosen != got.AckWait {
			diff("ack wait", got.AckWait, s+" (recorded at setup)")
		}
	}
	if got.MaxDeliver != want.MaxDeliver {
		diff("max deliver", got.MaxDeliver, want.MaxDeliver)
	}
	if len(got.BackOff) > 0 {
		diff("backoff", got.BackOff, "none")
	}
	if got.MaxAckPending != want.MaxAckPending {
		diff("max ack pending", got.MaxAckPending, want.MaxAckPending)
	}
	if got.MaxWaiting != 0 && got.MaxWaiting != defaultMaxWaiting {
		diff("max waiting", got.MaxWaiting, defaultMaxWaiting)
	}
	if got.ReplayPolicy != want.ReplayPolicy {
		diff("replay policy", got.ReplayPolicy, want.ReplayPolicy)
	}
	if got.RateLimit != 0 {
		diff("rate limit", fmt.Sprintf("%d bps", got.RateLimit), "none")
	}
	if got.SampleFrequency != "" {
		diff("sample frequency", got.SampleFrequency, "none")
	}
	if got.HeadersOnly {
		diff("headers only", true, false)
	}
	if got.DeliverSubject != "" {
		diff("deliver subject (a push consumer)", fmt.Sprintf("%q", got.DeliverSubject), "none (pull)")
	}
	if got.InactiveThreshold != 0 {
		diff("inactive threshold (the server deletes it when idle)", got.InactiveThreshold, "none")
	}
	if got.MaxRequestBatch != 0 || got.MaxRequestExpires != 0 || got.MaxRequestMaxBytes != 0 {
		diff("pull request limits", fmt.Sprintf("batch %d expires %s bytes %d", got.MaxRequestBatch, got.MaxRequestExpires, got.MaxRequestMaxBytes), "none")
	}
	if got.PauseUntil != nil && got.PauseUntil.After(time.Now()) {
		diff("paused until", got.PauseUntil.UTC().Format(time.RFC3339), "not paused")
	}
	if got.PriorityPolicy != jetstream.PriorityPolicyNone || len(got.PriorityGroups) > 0 {
		diff("priority groups", got.PriorityGroups, "none")
	}
	if got.MemoryStorage {
		diff("storage", "memory", "the stream's")
	}
	return d
}

func quoteAll(s []string) string {
	q := make([]string, len(s))
	for i, x := range s {
		q[i] = fmt.Sprintf("%q", x)
	}
	return "[" + strings.Join(q, " ") + "]"
}

// DriftError is a stage consumer whose configuration is not what setup
// made: the stage will not consume from it.
type DriftError struct {
	Stream, Consumer string
	Drift            []string
}

func (e *DriftError) Error() string {
	return fmt.Sprintf("consumer %s of stream %s was changed since setup made it (%s): not consuming from it; run `vmprep setup` as an admin user to restore it",
		e.Consumer, e.Stream, strings.Join(e.Drift, "; "))
}

// DriftObserver is an Observer that also hears whether a runner's consumer
// drifted (see ConsumerDrift), each time the runner checks.
type DriftObserver interface {
	ConsumerDrifted(stage, consumer string, drifted bool)
}

// checkDrift reads the consumer's configuration from the server and returns
// a *DriftError if it differs from what was made, nil if it does not, or the
// error reading it.
func checkDrift(ctx context.Context, cons jetstream.Consumer, stream, name string, filters []string) error {
	info, err := cons.Info(ctx)
	if err != nil {
		return err
	}
	if d := ConsumerDrift(name, filters, info.Config); len(d) > 0 {
		return &DriftError{Stream: stream, Consumer: name, Drift: d}
	}
	return nil
}

// Drift returns the *DriftError of the runner's consumer found by the last
// check, or nil: a runner whose consumer drifted takes no messages.
func (r *Runner) Drift() error {
	if d := r.drift.Load(); d != nil {
		return d
	}
	return nil
}

// noteDrift records a check's finding (nil: as made) and tells the observer.
func (r *Runner) noteDrift(name string, d *DriftError) {
	prev := r.drift.Swap(d)
	if o, ok := r.cfg.observer.(DriftObserver); ok {
		o.ConsumerDrifted(r.name, name, d != nil)
	}
	switch {
	case d != nil && prev == nil:
		r.cfg.logger.Error("not consuming", "stage", r.name, "err", d)
	case d == nil && prev != nil:
		r.cfg.logger.Info("consumer restored; consuming again", "stage", r.name, "consumer", name)
	}
}

// watchDrift checks the consumer every driftCheck until ctx ends. A check
// that cannot read the consumer (the server away) changes nothing: pulls
// failing already say so.
func (r *Runner) watchDrift(ctx context.Context) {
	t := time.NewTicker(r.cfg.driftCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := checkDrift(cctx, r.consumer, r.stream, r.name, r.filters)
		cancel()
		var d *DriftError
		switch {
		case errors.As(err, &d):
			r.noteDrift(r.name, d)
		case err == nil:
			r.noteDrift(r.name, nil)
		}
	}
}

// consumerConfig reads the configuration of consumer name of stream, pull
// or push.
func consumerConfig(ctx context.Context, js jetstream.JetStream, stream, name string) (jetstream.ConsumerConfig, error) {
	cons, err := js.Consumer(ctx, stream, name)
	if errors.Is(err, jetstream.ErrNotPullConsumer) {
		push, perr := js.PushConsumer(ctx, stream, name)
		if perr != nil {
			return jetstream.ConsumerConfig{}, perr
		}
		return push.CachedInfo().Config, nil
	}
	if err != nil {
		return jetstream.ConsumerConfig{}, err
	}
	return cons.CachedInfo().Config, nil
}
