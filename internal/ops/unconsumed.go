package ops

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/pkg/messages"
)

// A deployment missing a stage takes requests and never answers: the work
// waits in the stream for a consumer nobody pulls from. Two ways to see it:
// status knows the live processes (their heartbeats) and flags a consumer
// with work and none of them (Overview.Stranded); a client, which may not
// read heartbeats, samples the consumers (FindUnconsumed).

// Unconsumed is a stage consumer holding work that no process takes.
type Unconsumed struct {
	Consumer string `json:"consumer"`
	Subject  string `json:"subject"`
	// Waiting counts the messages no worker has taken.
	Waiting uint64 `json:"waiting"`
}

func (u Unconsumed) String() string {
	return fmt.Sprintf("no process consumes %s (%d waiting)", u.Subject, u.Waiting)
}

// StageConsumers names the work stream's shared stage consumers, in
// pipeline order (pipeline.StageConsumers).
func StageConsumers() []string {
	var names []string
	for _, c := range pipeline.StageConsumers() {
		names = append(names, c.Name)
	}
	return names
}

// FindUnconsumed samples consumers of the work stream twice, gap apart: one
// that holds undelivered messages with no message in progress and no pull
// waiting both times has no worker, since an idle worker always has a pull
// waiting and takes a message at once. A stage consumer that does not exist
// (no process of that stage ever started) has none either when the stream
// holds messages on its subjects. Any other error (a client that may not
// read consumer info) is returned.
func FindUnconsumed(ctx context.Context, js jetstream.JetStream, consumers []string, gap time.Duration) ([]Unconsumed, error) {
	sample := func() (map[string]Unconsumed, error) {
		out := map[string]Unconsumed{}
		for _, name := range consumers {
			c, err := js.Consumer(ctx, messages.StreamWork, name)
			if errors.Is(err, jetstream.ErrConsumerNotFound) {
				u, err := missingConsumer(ctx, js, name)
				if err != nil {
					return nil, err
				}
				if u.Waiting > 0 {
					out[name] = u
				}
				continue
			}
			if err != nil {
				return nil, fmt.Errorf("consumer %s: %w", name, err)
			}
			info := c.CachedInfo()
			if info.NumPending > 0 && info.NumAckPending == 0 && info.NumWaiting == 0 {
				out[name] = Unconsumed{Consumer: name, Subject: filterOf(info.Config), Waiting: info.NumPending}
			}
		}
		return out, nil
	}
	first, err := sample()
	if err != nil || len(first) == 0 {
		return nil, err
	}
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-time.After(gap):
	}
	second, err := sample()
	if err != nil {
		return nil, err
	}
	var out []Unconsumed
	for _, name := range consumers {
		if u, ok := second[name]; ok {
			if _, was := first[name]; was {
				out = append(out, u)
			}
		}
	}
	return out, nil
}

// missingConsumer counts the messages waiting on the subjects of a stage
// consumer that does not exist; a consumer that is not a shared stage's
// (a target host's) counts none.
func missingConsumer(ctx context.Context, js jetstream.JetStream, name string) (Unconsumed, error) {
	u := Unconsumed{Consumer: name}
	for _, c := range pipeline.StageConsumers() {
		if c.Name != name {
			continue
		}
		s, err := js.Stream(ctx, messages.StreamWork)
		if err != nil {
			return u, fmt.Errorf("stream %s: %w", messages.StreamWork, err)
		}
		u.Subject = strings.Join(c.Filters, " ")
		for _, f := range c.Filters {
			info, err := s.Info(ctx, jetstream.WithSubjectFilter(f))
			if err != nil {
				return u, fmt.Errorf("stream %s: %w", messages.StreamWork, err)
			}
			for _, n := range info.State.Subjects {
				u.Waiting += n
			}
		}
	}
	return u, nil
}
