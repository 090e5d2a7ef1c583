// Package pipeline wires vmprep's domain packages (catalog/resolve, download,
// store, objectstore, qcow2) into the stage handlers that run on JetStream
// through internal/stage: resolver → fetcher → verifier → [converter] → collector.
// It also declares the streams, consumers and buckets, and runs every stage
// in one process for the single-binary mode.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/lease"
	"github.com/vmprep/vmprep/internal/objectstore"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/pkg/messages"
)

// Stream and bucket retention.
const (
	resultsMaxAge  = 7 * 24 * time.Hour
	deadMaxAge     = 7 * 24 * time.Hour
	requestsMaxAge = 7 * 24 * time.Hour
	dedupWindow    = 2 * time.Minute
	// LeaseTTL is how long a download lease lasts unrenewed: a dead
	// fetcher's lease lapses within it and another fetcher takes over.
	LeaseTTL = 20 * time.Second
	// DefaultLeaseStall is how long a download lease may be renewed without
	// its recorded progress growing before a waiting fetcher takes it over
	// (a stuck holder, or a forged lease renewed forever). An honest holder
	// records progress every LeaseTTL/4 while bytes flow, and when the
	// origin stops sending it keeps the lease until it fails the download
	// for all waiters (Record.Failed) within the origin timeout: so the
	// stall is never less than twice the origin timeout (see leaseStall),
	// and a silent origin ends every request instead of a takeover
	// restarting the wait.
	DefaultLeaseStall = 2 * DefaultOriginTimeout
)

// SetupConfig says how missing streams and buckets are created.
type SetupConfig struct {
	// Replicas of every stream and bucket created (default 1; 3 on a
	// three-node cluster). Existing ones are left as they are.
	Replicas int
	// ObjectBucket, if set, is the object store of a multi-host deployment.
	ObjectBucket string
	// Logger receives drift warnings.
	Logger *slog.Logger
}

// Infra is what the stages use besides their own consumers.
type Infra struct {
	Requests *Requests
	Leases   jetstream.KeyValue
	Verified jetstream.KeyValue
	// Objects is nil in a deployment without an object store.
	Objects *objectstore.Store
}

func streamConfigs(replicas int) []jetstream.StreamConfig {
	return []jetstream.StreamConfig{
		{
			Name:        messages.StreamWork,
			Description: "vmprep pending work: prepare requests and asset events",
			Subjects:    []string{messages.SubjectPrepare, messages.SubjectPrepare + ".>", "vmprep.asset.>"},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			Duplicates:  dedupWindow,
			Replicas:    replicas,
		},
		{
			Name:              messages.StreamResults,
			Description:       "vmprep final results, one per request id",
			Subjects:          []string{messages.SubjectResultPrefix + ">"},
			Retention:         jetstream.LimitsPolicy,
			Storage:           jetstream.FileStorage,
			MaxAge:            resultsMaxAge,
			MaxMsgsPerSubject: 1,
			Duplicates:        dedupWindow,
			Replicas:          replicas,
			// Clients read their result by direct get (plus a core
			// subscription), so they need no consumer: a consumer's
			// deliver subject is not checked against its creator's
			// permissions, and would let a client relay messages.
			AllowDirect: true,
		},
		{
			Name:        messages.StreamDead,
			Description: "vmprep dead letters: messages no stage could process",
			Subjects:    []string{messages.SubjectDeadPrefix + "*"},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			MaxAge:      deadMaxAge,
			Duplicates:  dedupWindow,
			Replicas:    replicas,
		},
	}
}

func kvConfigs(replicas int) []jetstream.KeyValueConfig {
	return []jetstream.KeyValueConfig{
		{
			Bucket:      messages.BucketRequests,
			Description: "vmprep request state: joins a request's assets into one result",
			History:     stage.OwnedHistory, // read as the resolver's last write (stage.GetOwned)
			TTL:         requestsMaxAge,
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
		},
		{
			Bucket:      messages.BucketLeases,
			Description: "vmprep origin-download leases, one per digest (renewed while bytes flow)",
			History:     1,
			TTL:         LeaseTTL,
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
		},
		{
			Bucket:      messages.BucketVerified,
			Description: "vmprep verifier records: object versions streamed and found matching their signed digest",
			History:     stage.OwnedHistory, // read as the verifier's last write (stage.GetOwned)
			Storage:     jetstream.FileStorage,
			Replicas:    replicas,
		},
	}
}

// Setup creates the streams and buckets the pipeline uses if they are
// missing. Existing ones are used as they are — an operator may have
// changed them (replicas, limits) — and differences from what this build
// would create are logged as drift. Every stage process calls it at
// start-up; it is idempotent.
func Setup(ctx context.Context, js jetstream.JetStream, cfg SetupConfig) (*Infra, error) {
	if cfg.Replicas <= 0 {
		cfg.Replicas = 1
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	for _, want := range streamConfigs(cfg.Replicas) {
		if err := ensureStream(ctx, js, want, log); err != nil {
			return nil, err
		}
	}
	infra := &Infra{}
	for _, want := range kvConfigs(cfg.Replicas) {
		kv, err := js.KeyValue(ctx, want.Bucket)
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			err = stage.Create(ctx, js.Conn(), "key-value bucket "+want.Bucket, "$JS.API.STREAM.CREATE.KV_"+want.Bucket, func(ctx context.Context) (err error) {
				kv, err = js.CreateKeyValue(ctx, want)
				return err
			})
			if errors.Is(err, jetstream.ErrBucketExists) || errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				kv, err = js.KeyValue(ctx, want.Bucket)
			}
		} else if err == nil {
			if st, serr := kv.Status(ctx); serr == nil {
				warnKVDrift(log, want, st)
			}
		}
		if err != nil {
			return nil, fmt.Errorf("setup key-value bucket %s: %w", want.Bucket, err)
		}
		switch want.Bucket {
		case messages.BucketRequests:
			infra.Requests = NewRequests(js.Conn(), kv)
		case messages.BucketLeases:
			infra.Leases = kv
		case messages.BucketVerified:
			infra.Verified = kv
		}
	}
	if cfg.ObjectBucket != "" {
		var objs *objectstore.Store
		err := stage.Create(ctx, js.Conn(), "object bucket "+cfg.ObjectBucket, "$JS.API.STREAM.CREATE."+objectstore.StreamName(cfg.ObjectBucket), func(ctx context.Context) (err error) {
			objs, err = objectstore.Open(ctx, js, objectstore.Config{Bucket: cfg.ObjectBucket, Replicas: cfg.Replicas}, objectstore.WithLogger(log))
			return err
		})
		if err != nil {
			return nil, fmt.Errorf("setup object bucket: %w", err)
		}
		infra.Objects = objs
	}
	return infra, nil
}

func ensureStream(ctx context.Context, js jetstream.JetStream, want jetstream.StreamConfig, log *slog.Logger) error {
	s, err := js.Stream(ctx, want.Name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		err = stage.Create(ctx, js.Conn(), "stream "+want.Name, "$JS.API.STREAM.CREATE."+want.Name, func(ctx context.Context) error {
			_, err := js.CreateStream(ctx, want)
			return err
		})
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			return nil // created by another process meanwhile
		}
		if err != nil {
			return fmt.Errorf("setup stream %s: %w", want.Name, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("setup stream %s: %w", want.Name, err)
	}
	got := s.CachedInfo().Config
	if drift := streamDrift(want, got); len(drift) > 0 {
		log.Warn("stream differs from what this build creates; leaving it as it is", "stream", want.Name, "drift", drift)
	}
	if got.Retention != want.Retention {
		return fmt.Errorf("stream %s has retention %s, vmprep needs %s: delete the stream to recreate it", want.Name, got.Retention, want.Retention)
	}
	// A stream without the subjects the stages publish to cannot work (an
	// older build's stream, say, before namespaces): add what is missing,
	// replacing what a new subject covers, and change nothing else.
	subjects, changed := neededSubjects(got.Subjects, want.Subjects)
	direct := want.AllowDirect && !got.AllowDirect
	if !changed && !direct {
		return nil
	}
	upd := got
	upd.Subjects = subjects
	upd.AllowDirect = upd.AllowDirect || want.AllowDirect
	denied, err := stage.Call(ctx, js.Conn(), "$JS.API.STREAM.UPDATE."+want.Name, func(ctx context.Context) error {
		_, err := js.UpdateStream(ctx, upd)
		return err
	})
	if err != nil {
		if denied {
			err = fmt.Errorf("this user may not change it: run `vmprep setup` as an admin user: %w", err)
		}
		return fmt.Errorf("stream %s lacks subjects or direct gets vmprep needs (subjects %v; it has %v; allow_direct %t), and adding them failed: %w",
			want.Name, want.Subjects, got.Subjects, got.AllowDirect, err)
	}
	if changed {
		log.Warn("added the subjects vmprep needs to the stream", "stream", want.Name, "from", got.Subjects, "to", subjects)
	}
	if direct {
		log.Warn("turned on direct gets on the stream: clients read it by direct get, with no consumer", "stream", want.Name)
	}
	return nil
}

// streamDrift lists the settings of got that differ from want.
func streamDrift(want, got jetstream.StreamConfig) []string {
	var d []string
	if got.Replicas != want.Replicas {
		d = append(d, fmt.Sprintf("replicas %d (would create %d)", got.Replicas, want.Replicas))
	}
	if got.MaxAge != want.MaxAge {
		d = append(d, fmt.Sprintf("max age %s (would create %s)", got.MaxAge, want.MaxAge))
	}
	if got.MaxMsgsPerSubject != want.MaxMsgsPerSubject && want.MaxMsgsPerSubject != 0 {
		d = append(d, fmt.Sprintf("max messages per subject %d (would create %d)", got.MaxMsgsPerSubject, want.MaxMsgsPerSubject))
	}
	if got.Storage != want.Storage {
		d = append(d, fmt.Sprintf("storage %s (would create %s)", got.Storage, want.Storage))
	}
	if got.Duplicates != want.Duplicates {
		d = append(d, fmt.Sprintf("duplicate window %s (would create %s)", got.Duplicates, want.Duplicates))
	}
	return d
}

func warnKVDrift(log *slog.Logger, want jetstream.KeyValueConfig, st jetstream.KeyValueStatus) {
	var d []string
	if st.TTL() != want.TTL {
		d = append(d, fmt.Sprintf("ttl %s (would create %s)", st.TTL(), want.TTL))
	}
	if st.History() < int64(want.History) {
		d = append(d, fmt.Sprintf("history %d (would create %d; vmprep setup as admin raises it)", st.History(), want.History))
	}
	if kvs, ok := st.(*jetstream.KeyValueBucketStatus); ok {
		if r := kvs.StreamInfo().Config.Replicas; r != want.Replicas {
			d = append(d, fmt.Sprintf("replicas %d (would create %d)", r, want.Replicas))
		}
	}
	if len(d) > 0 {
		log.Warn("key-value bucket differs from what this build creates; leaving it as it is", "bucket", want.Bucket, "drift", d)
	}
}

// StageConsumer is the durable consumer that every process of a stage
// shares, and the subjects it takes.
type StageConsumer struct {
	Name    string
	Filters []string
}

// StageConsumers are the consumers of the stages that share work. A
// converter host's own converter_<host> (targeted work) is not among them:
// see TargetConsumers.
func StageConsumers() []StageConsumer {
	return []StageConsumer{
		{messages.StageResolver, []string{messages.SubjectPrepare, messages.SubjectPrepare + ".>"}},
		{messages.StageFetcher, []string{messages.SubjectFetch}},
		{messages.StageVerifier, []string{messages.SubjectVerify}},
		{messages.StageConverter, []string{messages.SubjectConvert}},
		{messages.StageCollector, []string{messages.SubjectDone + ".>"}},
	}
}

// TargetConsumers are the consumers of the converters on hosts: each takes
// only its host's target subject.
func TargetConsumers(hosts []string) []StageConsumer {
	var out []StageConsumer
	for _, h := range hosts {
		out = append(out, StageConsumer{messages.TargetConsumer(h), []string{messages.TargetSubject(h)}})
	}
	return out
}

// ConsumerFilters returns the filter subjects setup gives the consumer of
// VMPREP_WORK named name, and whether it is one setup makes.
func ConsumerFilters(name string) ([]string, bool) {
	for _, c := range StageConsumers() {
		if c.Name == name {
			return c.Filters, true
		}
	}
	if host, ok := strings.CutPrefix(name, messages.StageConverter+"_"); ok && messages.ValidateTarget(host) == nil {
		return []string{messages.TargetSubject(host)}, true
	}
	return nil, false
}

// SetupConsumers creates the stage consumers that are missing, and the
// converter consumers of hosts, and restores any that were changed (see
// stage.EnsureConsumer; ackWait, if positive, is given to all of them, 0
// keeps theirs): with least-privilege users the
// stages can only bind, so the operator (vmprep setup) makes them — a
// converter host's user may not create even its own, so that no stage
// user may create or change any consumer.
func SetupConsumers(ctx context.Context, js jetstream.JetStream, ackWait time.Duration, hosts []string, log *slog.Logger) error {
	hosts = slices.Clone(hosts)
	for _, h := range hosts {
		if err := messages.ValidateTarget(h); err != nil {
			return fmt.Errorf("converter host: %w", err)
		}
	}
	// The hosts' consumers made before are checked too, so that a setup
	// without --hosts restores a changed converter_<host> as well.
	work, err := js.Stream(ctx, messages.StreamWork)
	if err != nil {
		return fmt.Errorf("setup consumers: %w", err)
	}
	names := work.ConsumerNames(ctx)
	for name := range names.Name() {
		if host, ok := strings.CutPrefix(name, messages.StageConverter+"_"); ok && messages.ValidateTarget(host) == nil && !slices.Contains(hosts, host) {
			hosts = append(hosts, host)
		}
	}
	if err := names.Err(); err != nil {
		return fmt.Errorf("setup consumers: list %s: %w", messages.StreamWork, err)
	}
	for _, c := range append(StageConsumers(), TargetConsumers(hosts)...) {
		if err := stage.EnsureConsumer(ctx, js, messages.StreamWork, c.Name, c.Filters, ackWait, log); err != nil {
			return fmt.Errorf("setup consumer %s: %w", c.Name, err)
		}
	}
	return nil
}

// HealerConsumer is the consumer of corruption reports, which the verifier
// process binds in a deployment with an object store (only there: without
// one nobody would pull from it).
func HealerConsumer() StageConsumer {
	return StageConsumer{messages.ConsumerHealer, []string{messages.SubjectCorrupt}}
}

// SetupHealer creates the healer consumer if it is missing (see
// SetupConsumers).
func SetupHealer(ctx context.Context, js jetstream.JetStream, ackWait time.Duration, log *slog.Logger) error {
	c := HealerConsumer()
	if err := stage.EnsureConsumer(ctx, js, messages.StreamWork, c.Name, c.Filters, ackWait, log); err != nil {
		return fmt.Errorf("setup consumer %s: %w", c.Name, err)
	}
	return nil
}

// WaitForSetup retries Setup until it succeeds or ctx ends: a stage may start
// before its NATS server is reachable.
func WaitForSetup(ctx context.Context, js jetstream.JetStream, cfg SetupConfig) (*Infra, error) {
	var infra *Infra
	err := AwaitJetStream(ctx, js, cfg.Logger, func(ctx context.Context) (err error) {
		infra, err = Setup(ctx, js, cfg)
		return err
	})
	return infra, err
}

// AwaitJetStream calls fn until it succeeds, fails with what waiting cannot
// fix (stage.Unavailable says which), or ctx ends: a process may start before
// its NATS server is reachable, or while a cluster node is lost and a leader
// is being elected, and then waits rather than exits. A call the server
// refuses for want of permission looks like a timeout (the server drops it
// and says why on the connection): fn's context ends at the refusal, which
// ends the wait too.
func AwaitJetStream(ctx context.Context, js jetstream.JetStream, log *slog.Logger, fn func(context.Context) error) error {
	nc := js.Conn()
	delay := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		var err error
		if nc != nil && !nc.IsConnected() {
			// fn's calls would wait for the connection and time out with
			// only "context deadline exceeded"; the connection's own log
			// says why it cannot connect.
			err = fmt.Errorf("not connected to NATS at %s (%s): %w", strings.Join(nc.Servers(), ","), strings.ToLower(nc.Status().String()), nats.ErrDisconnected)
		} else {
			callCtx, cancel := stage.UntilDenied(ctx, nc, "")
			err = fn(callCtx)
			refused := err != nil && callCtx.Err() != nil && ctx.Err() == nil
			cancel()
			if err == nil {
				return nil
			}
			if refused {
				return fmt.Errorf("%w: refused: %v", err, nc.LastError())
			}
		}
		if !stage.Unavailable(ctx, err) {
			if ctx.Err() != nil {
				return errors.Join(err, ctx.Err())
			}
			return err
		}
		if log != nil && (attempt == 1 || attempt%10 == 0) {
			log.Warn("waiting for NATS JetStream", "err", err)
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return errors.Join(err, ctx.Err())
		case <-t.C:
		}
		if delay < 2*time.Second {
			delay *= 2
		}
	}
}

// leasesFor returns the download leases of infra taken in holder's name,
// taken over from a holder without progress after stall (0: the default).
func (i *Infra) leasesFor(holder string, stall time.Duration) *lease.Leases {
	if i == nil || i.Leases == nil {
		return nil
	}
	if stall <= 0 {
		stall = DefaultLeaseStall
	}
	return lease.New(i.Leases, holder, LeaseTTL, lease.WithStall(stall))
}

// neededSubjects returns have plus every subject of need it lacks, without
// the ones a needed wildcard covers (a stream's subjects may not overlap).
func neededSubjects(have, need []string) ([]string, bool) {
	var missing []string
	for _, n := range need {
		if !slices.Contains(have, n) {
			missing = append(missing, n)
		}
	}
	if len(missing) == 0 {
		return have, false
	}
	var out []string
	for _, h := range have {
		covered := false
		for _, m := range missing {
			covered = covered || subjectCovers(m, h)
		}
		if !covered {
			out = append(out, h)
		}
	}
	return append(out, missing...), true
}

// subjectCovers reports whether wildcard subject w matches every subject s
// matches (tokens: * one, > the rest).
func subjectCovers(w, s string) bool {
	wt, st := strings.Split(w, "."), strings.Split(s, ".")
	for i, t := range wt {
		if t == ">" {
			return len(st) > i
		}
		if i >= len(st) || (t != "*" && t != st[i]) || (t == "*" && st[i] == ">") {
			return false
		}
	}
	return len(wt) == len(st)
}
