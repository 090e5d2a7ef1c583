package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strconv"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/fleetkv"
	"github.com/vmprep/vmprep/internal/objectstore"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/pkg/messages"
)

// Limits bound what the streams and buckets may hold, so that no client (or
// runaway stage) can fill the servers' disks, and how many requests one
// namespace may have queued. vmprep setup applies them (DefaultLimits,
// changed by its flags) and applies changed ones on a later run.
type Limits struct {
	// WorkMaxMsgs and WorkMaxBytes bound VMPREP_WORK. Past them a publish is
	// refused (discard new): pending work is never dropped silently.
	WorkMaxMsgs  int64
	WorkMaxBytes int64
	// MaxMsgSize bounds one message of VMPREP_WORK, VMPREP_RESULTS and
	// VMPREP_DEAD (the stages decode no event larger than 1 MiB).
	MaxMsgSize int32
	// Results and dead letters: the oldest go first past these.
	ResultsMaxBytes int64
	ResultsMaxAge   time.Duration
	DeadMaxBytes    int64
	DeadMaxAge      time.Duration
	// BucketMaxBytes bounds each key-value bucket (past it a put fails).
	BucketMaxBytes int64
	// ObjectMaxBytes bounds the object bucket (past it a put fails).
	ObjectMaxBytes int64
	// QueuedPerNamespace is how many requests one namespace may have
	// waiting or in progress in one resolver; more are answered with a
	// failed result naming the limit. 0: no limit.
	QueuedPerNamespace int
}

// DefaultMaxQueuedPerNamespace is the resolver's per-namespace limit when
// vmprep setup has recorded none.
const DefaultMaxQueuedPerNamespace = 100

// DefaultLimits are vmprep setup's defaults (docs/operations.md lists them).
func DefaultLimits() Limits {
	return Limits{
		WorkMaxMsgs:        100_000,
		WorkMaxBytes:       1 << 30,
		MaxMsgSize:         1 << 20,
		ResultsMaxBytes:    1 << 30,
		ResultsMaxAge:      resultsMaxAge,
		DeadMaxBytes:       256 << 20,
		DeadMaxAge:         deadMaxAge,
		BucketMaxBytes:     256 << 20,
		ObjectMaxBytes:     20 << 30,
		QueuedPerNamespace: DefaultMaxQueuedPerNamespace,
	}
}

// metaQueuedPerNamespace is where setup records Limits.QueuedPerNamespace:
// in VMPREP_WORK's metadata, which every resolver reads at start.
const metaQueuedPerNamespace = "vmprep_max_queued_per_namespace"

// Check refuses limits that make no sense, naming the field.
func (l Limits) Check() error {
	for _, f := range []struct {
		name string
		v    int64
	}{
		{"work max messages", l.WorkMaxMsgs}, {"work max bytes", l.WorkMaxBytes}, {"max message size", int64(l.MaxMsgSize)},
		{"results max bytes", l.ResultsMaxBytes}, {"dead max bytes", l.DeadMaxBytes},
		{"bucket max bytes", l.BucketMaxBytes}, {"object max bytes", l.ObjectMaxBytes},
		{"results max age", int64(l.ResultsMaxAge)}, {"dead max age", int64(l.DeadMaxAge)},
	} {
		if f.v <= 0 {
			return fmt.Errorf("%s %d: want a positive limit", f.name, f.v)
		}
	}
	if l.MaxMsgSize < 64<<10 {
		return fmt.Errorf("max message size %d: want at least 64 KiB (events can be that large)", l.MaxMsgSize)
	}
	if l.QueuedPerNamespace < 0 {
		return fmt.Errorf("max queued per namespace %d: want 0 (no limit) or more", l.QueuedPerNamespace)
	}
	return nil
}

// StreamLimits is one stream's limits as the server has them.
type StreamLimits struct {
	Stream     string
	MaxMsgs    int64
	MaxBytes   int64
	MaxAge     time.Duration
	MaxMsgSize int32
	Discard    jetstream.DiscardPolicy
	// Updated says whether this run changed them.
	Updated bool
}

// ownedBuckets are the key-value buckets read as each key's owner's last
// write (stage.GetOwned): they keep stage.OwnedHistory entries per key.
var ownedBuckets = []string{messages.BucketRequests, messages.BucketVerified, fleetkv.Bucket}

// ApplyLimits gives the pipeline's streams, the key-value buckets kvBuckets
// (and no roll-ups) and the object bucket (if named) the limits l, updating those whose
// limits differ, and returns every stream's limits. Setup must have
// created them.
func ApplyLimits(ctx context.Context, js jetstream.JetStream, l Limits, kvBuckets []string, objectBucket string, log *slog.Logger) ([]StreamLimits, error) {
	if err := l.Check(); err != nil {
		return nil, err
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	type change func(*jetstream.StreamConfig)
	plan := []struct {
		stream string
		set    change
	}{
		{messages.StreamWork, func(c *jetstream.StreamConfig) {
			c.MaxMsgs, c.MaxBytes, c.MaxMsgSize, c.Discard = l.WorkMaxMsgs, l.WorkMaxBytes, l.MaxMsgSize, jetstream.DiscardNew
			c.Metadata = maps.Clone(c.Metadata)
			if c.Metadata == nil {
				c.Metadata = map[string]string{}
			}
			c.Metadata[metaQueuedPerNamespace] = strconv.Itoa(l.QueuedPerNamespace)
		}},
		{messages.StreamResults, func(c *jetstream.StreamConfig) {
			c.MaxBytes, c.MaxAge, c.MaxMsgSize, c.Discard = l.ResultsMaxBytes, l.ResultsMaxAge, l.MaxMsgSize, jetstream.DiscardOld
		}},
		{messages.StreamDead, func(c *jetstream.StreamConfig) {
			c.MaxBytes, c.MaxAge, c.MaxMsgSize, c.Discard = l.DeadMaxBytes, l.DeadMaxAge, l.MaxMsgSize, jetstream.DiscardOld
		}},
	}
	for _, b := range kvBuckets {
		// A bucket's max age is its TTL (the leases' lapse): not a size limit.
		// No roll-ups: a publish with "Nats-Rollup: all" on the one key a
		// user may write purges the whole bucket (permissions see only the
		// subject), so a converter host could wipe every selection and plan
		// of the fleet. vmprep purges no key (deletes are markers), and
		// nats.go creates buckets with roll-ups allowed.
		plan = append(plan, struct {
			stream string
			set    change
		}{"KV_" + b, func(c *jetstream.StreamConfig) {
			c.MaxBytes, c.AllowRollup = l.BucketMaxBytes, false
			// Owned keys are read as their owner's last write, stepping
			// back over what others put there (stage.GetOwned): a bucket
			// made with one entry per key keeps nothing to step back to.
			if slices.Contains(ownedBuckets, b) {
				c.MaxMsgsPerSubject = max(c.MaxMsgsPerSubject, stage.OwnedHistory)
			}
		}})
	}
	if objectBucket != "" {
		plan = append(plan, struct {
			stream string
			set    change
		}{objectstore.StreamName(objectBucket), func(c *jetstream.StreamConfig) { c.MaxBytes = l.ObjectMaxBytes }})
	}
	var out []StreamLimits
	for _, p := range plan {
		s, err := js.Stream(ctx, p.stream)
		if err != nil {
			return nil, fmt.Errorf("limits of stream %s: %w", p.stream, err)
		}
		have := s.CachedInfo().Config
		want := have
		p.set(&want)
		updated := false
		if !sameLimits(have, want) {
			denied, err := stage.Call(ctx, js.Conn(), "$JS.API.STREAM.UPDATE."+p.stream, func(ctx context.Context) error {
				s, err = js.UpdateStream(ctx, want)
				return err
			})
			if err != nil {
				if denied {
					err = fmt.Errorf("this user may not change it: run `vmprep setup` as an admin user: %w", err)
				}
				return nil, fmt.Errorf("set the limits of stream %s (max bytes %d): %w", p.stream, want.MaxBytes, err)
			}
			log.Info("updated stream limits", "stream", p.stream)
			updated = true
		}
		c := s.CachedInfo().Config
		out = append(out, StreamLimits{Stream: p.stream, MaxMsgs: c.MaxMsgs, MaxBytes: c.MaxBytes, MaxAge: c.MaxAge,
			MaxMsgSize: c.MaxMsgSize, Discard: c.Discard, Updated: updated})
	}
	return out, nil
}

// sameLimits compares what ApplyLimits sets.
func sameLimits(a, b jetstream.StreamConfig) bool {
	ma, _ := json.Marshal(a.Metadata)
	mb, _ := json.Marshal(b.Metadata)
	return a.MaxMsgs == b.MaxMsgs && a.MaxBytes == b.MaxBytes && a.MaxAge == b.MaxAge &&
		a.MaxMsgSize == b.MaxMsgSize && a.Discard == b.Discard && a.AllowRollup == b.AllowRollup && a.MaxMsgsPerSubject == b.MaxMsgsPerSubject &&
		string(ma) == string(mb)
}

// QueuedPerNamespace is the per-namespace request limit vmprep setup
// recorded on VMPREP_WORK (DefaultMaxQueuedPerNamespace if none).
func QueuedPerNamespace(ctx context.Context, js jetstream.JetStream) (int, error) {
	s, err := js.Stream(ctx, messages.StreamWork)
	if err != nil {
		return 0, fmt.Errorf("read the per-namespace limit from stream %s: %w", messages.StreamWork, err)
	}
	v, ok := s.CachedInfo().Config.Metadata[metaQueuedPerNamespace]
	if !ok {
		return DefaultMaxQueuedPerNamespace, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("stream %s metadata %s=%q: want a count (run vmprep setup --max-queued-per-namespace N)", messages.StreamWork, metaQueuedPerNamespace, v)
	}
	return n, nil
}

// namespaceKey is the fair-scheduling key of a stage message: the
// namespace of a request (from its subject) or of an asset event (from its
// body; an unreadable one is scheduled under "", and fails in its handler).
func namespaceKey(m stage.Message) string {
	if ns, ok := messages.NamespaceOf(m.Subject); ok {
		return ns
	}
	var probe struct {
		Namespace string `json:"namespace"`
	}
	if len(m.Data) > 1<<20 || json.Unmarshal(m.Data, &probe) != nil {
		return ""
	}
	return probe.Namespace
}

// errQueuedLimit is the resolver's refusal of a request over its
// namespace's limit: the requester reads it in the failed result.
func errQueuedLimit(ns string, limit int) error {
	name := ns
	if name == "" {
		name = "(default)"
	}
	return fmt.Errorf("%w: namespace %s already has %d requests waiting or in progress (the limit per namespace, vmprep setup --max-queued-per-namespace); try again when some have finished",
		stage.ErrQueueFull, name, limit)
}
