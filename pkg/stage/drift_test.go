package stage

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

func TestConsumerDrift(t *testing.T) {
	t.Parallel()
	filters := []string{"vmprep.prepare", "vmprep.prepare.>"}
	made := func() jetstream.ConsumerConfig { return ConsumerConfig("resolver", filters, 45*time.Second) }
	future := time.Now().Add(time.Hour)
	for _, tc := range []struct {
		name   string
		change func(c *jetstream.ConsumerConfig)
		want   string // "" for no drift
	}{
		{"as made", func(*jetstream.ConsumerConfig) {}, ""},
		{"filters in another order", func(c *jetstream.ConsumerConfig) { c.FilterSubjects = []string{filters[1], filters[0]} }, ""},
		{"server defaults", func(c *jetstream.ConsumerConfig) { c.MaxWaiting, c.Replicas = 512, 3 }, ""},
		{"filter rewritten", func(c *jetstream.ConsumerConfig) { c.FilterSubjects = []string{"vmprep.asset.target.x"} }, `filter subjects is ["vmprep.asset.target.x"]`},
		{"one filter dropped", func(c *jetstream.ConsumerConfig) { c.FilterSubjects, c.FilterSubject = nil, "vmprep.prepare" }, "filter subjects"},
		{"ack wait changed", func(c *jetstream.ConsumerConfig) { c.AckWait = time.Millisecond }, "ack wait is 1ms, setup makes 45s"},
		{"max deliver", func(c *jetstream.ConsumerConfig) { c.MaxDeliver = 1 }, "max deliver is 1"},
		{"max ack pending", func(c *jetstream.ConsumerConfig) { c.MaxAckPending = 1 }, "max ack pending is 1"},
		{"max waiting", func(c *jetstream.ConsumerConfig) { c.MaxWaiting = 1 }, "max waiting is 1"},
		{"paused", func(c *jetstream.ConsumerConfig) { c.PauseUntil = &future }, "paused until"},
		{"push", func(c *jetstream.ConsumerConfig) { c.DeliverSubject = "vmprep.result.bob.x" }, `deliver subject (a push consumer) is "vmprep.result.bob.x"`},
		{"expires", func(c *jetstream.ConsumerConfig) { c.InactiveThreshold = time.Second }, "inactive threshold"},
		{"headers only", func(c *jetstream.ConsumerConfig) { c.HeadersOnly = true }, "headers only"},
		{"deliver policy", func(c *jetstream.ConsumerConfig) { c.DeliverPolicy = jetstream.DeliverNewPolicy }, "deliver policy"},
		{"backoff", func(c *jetstream.ConsumerConfig) { c.BackOff = []time.Duration{time.Hour} }, "backoff"},
		{"rate limit", func(c *jetstream.ConsumerConfig) { c.RateLimit = 8 }, "rate limit"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := made()
			tc.change(&c)
			d := strings.Join(ConsumerDrift("resolver", filters, c), "; ")
			if tc.want == "" && d != "" || tc.want != "" && !strings.Contains(d, tc.want) {
				t.Errorf("drift %q, want %q", d, tc.want)
			}
		})
	}
	// A consumer made by an older build records no ack wait: any is its own.
	legacy := made()
	legacy.Metadata, legacy.AckWait = nil, time.Minute
	if d := ConsumerDrift("resolver", filters, legacy); len(d) != 0 {
		t.Errorf("legacy consumer: %v", d)
	}
}
