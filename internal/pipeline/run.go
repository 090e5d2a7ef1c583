package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/vmprep/vmprep/internal/fleetkv"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/download"
	"github.com/vmprep/vmprep/internal/metrics"
	"github.com/vmprep/vmprep/internal/place"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/messages"
)

// AllStages lists every stage in pipeline order.
var AllStages = []string{messages.StageResolver, messages.StageFetcher, messages.StageVerifier, messages.StageConverter, messages.StageCollector}

// ParseStages reads a comma-separated stage list; "all" means every stage and
// "none" (or "") means no stage. The names mean what the stage binaries
// run: "resolver" brings the collector with it, as the resolver binary does
// (a deployment without a collector would take requests and never answer).
func ParseStages(s string) ([]string, error) {
	switch strings.TrimSpace(s) {
	case "all":
		return append([]string(nil), AllStages...), nil
	case "", "none":
		return nil, nil
	}
	var out []string
	seen := map[string]bool{}
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		ok := false
		for _, known := range AllStages {
			ok = ok || known == name
		}
		if !ok {
			return nil, fmt.Errorf("unknown stage %q (stages: %s, all, none)", name, strings.Join(AllStages, ", "))
		}
		if !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	if seen[messages.StageResolver] && !seen[messages.StageCollector] {
		out = append(out, messages.StageCollector)
	}
	return out, nil
}

// Deps are what the stages need. Only the fields the chosen stages use must be set:
// the resolver needs Resolver; the fetcher Downloader; all need Store.
type Deps struct {
	Store      *store.Store
	Resolver   Resolver
	Downloader *download.Client
	Logger     *slog.Logger
	// Concurrency is the number of messages each stage works on at once in this process.
	Concurrency int
	// ResolutionMaxAge: see ResolverStage.MaxAge.
	ResolutionMaxAge time.Duration
	// OriginTimeout: see FetcherStage.OriginTimeout.
	OriginTimeout time.Duration
	// RunnerOptions are appended to every runner's options (tests shorten waits).
	RunnerOptions []stage.Option

	// ObjectBucket, if set, makes this a multi-host deployment: verified
	// content lives in that JetStream Object Store bucket, and each process
	// keeps Store as its own local read-through cache.
	ObjectBucket string
	// Replicas of the streams and buckets this process creates (default 1).
	Replicas int
	// Host is this host's name: results name it where their paths are
	// valid, and with an object store the converter takes the work of
	// requests targeted at it (default: place.HostName()).
	Host string
	// TargetedOnly makes the converter take only work targeted at Host,
	// not the untargeted work that any converter may do.
	TargetedOnly bool
	// CloneDir is the directory where the converter makes the clones that
	// requests targeted at Host ask for ("": it makes none). It must exist.
	CloneDir string
	// Metrics, if set, observes every runner and counts what the stages move.
	Metrics *metrics.Metrics
	// FairAhead bounds how many messages each stage pulls ahead of its
	// workers to serve namespaces fairly (0: see fairAhead).
	FairAhead int
	// SweepInterval and OrphanGrace drive the verifier's sweep of orphaned
	// object chunks (defaults DefaultSweepInterval, DefaultOrphanGrace).
	SweepInterval, OrphanGrace time.Duration
	// LeaseStall is how long a download lease may be renewed without its
	// progress growing before a waiting fetcher takes it over (default
	// DefaultLeaseStall).
	LeaseStall time.Duration
	// SyncInterval is how often the resolver looks for new builds of the
	// fleet's followed selections (default DefaultSyncInterval).
	SyncInterval time.Duration
	// Fleet makes the resolver coordinate the fleet's selections and the
	// converter follow its host's plan (internal/fleetkv): what the stage
	// commands and vmprep serve do, and vmprep prepare's private server not.
	Fleet bool
	// FleetFreeGrace: a converter host frees no build of its selections
	// committed more recently (0: store.DefaultGCMinAge; negative: none).
	FleetFreeGrace time.Duration
}

// RunStages sets up the streams and runs the named stages on nc until ctx
// ends, then drains them. It returns once every stage has stopped.
func RunStages(ctx context.Context, nc *nats.Conn, names []string, d Deps) error {
	st, err := NewStages(ctx, nc, names, d)
	if err != nil {
		return err
	}
	st.Run(ctx)
	return nil
}

// Stages are stage runners bound to their consumers, ready to run, and the
// periodic jobs of their processes (the verifier's orphan sweep).
type Stages struct {
	runners    []*stage.Runner
	background []func(context.Context)
}

// Run serves until ctx ends, then drains every stage.
func (s *Stages) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, job := range s.background {
		wg.Add(1)
		go func() {
			defer wg.Done()
			job(ctx)
		}()
	}
	for _, r := range s.runners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r.Run(ctx)
		}()
	}
	wg.Wait()
}

// NewStages sets up the streams (waiting for the server if need be) and binds
// each named stage to its durable consumer.
func NewStages(ctx context.Context, nc *nats.Conn, names []string, d Deps) (*Stages, error) {
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Concurrency <= 0 {
		d.Concurrency = 1
	}
	if d.Host == "" {
		d.Host = place.HostName()
	}
	if err := messages.ValidateTarget(d.Host); err != nil {
		return nil, fmt.Errorf("host name: %w", err)
	}
	if d.CloneDir != "" {
		dir, err := CloneDir(d.CloneDir)
		if err != nil {
			return nil, err
		}
		d.CloneDir = dir
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	infra, err := WaitForSetup(ctx, js, SetupConfig{Replicas: d.Replicas, ObjectBucket: d.ObjectBucket, Logger: d.Logger})
	if err != nil {
		return nil, err
	}
	medium := newMedium(nc, js, infra, d)
	progress := func(p messages.Progress) {
		data, err := messages.Encode(messages.TypeProgress, &p)
		if err == nil {
			_ = nc.Publish(messages.ProgressSubjectIn(p.Namespace, p.RequestID), data)
		}
	}
	type binding struct {
		name, consumer, filter string
		handler                stage.Handler
		// done is where the stage's failures go (messages.DoneSubject).
		done string
	}
	var bindings []binding
	var background []func(context.Context)
	for _, name := range names {
		log := d.Logger.With("stage", name)
		switch name {
		case messages.StageResolver:
			if d.Resolver == nil {
				return nil, errors.New("resolver stage needs a resolver")
			}
			h := &ResolverStage{Resolver: d.Resolver, Store: d.Store, Requests: infra.Requests, Medium: medium,
				Host: d.Host, MaxAge: d.ResolutionMaxAge, Logger: log, Progress: progress}
			bindings = append(bindings, binding{name, name, messages.SubjectPrepare, h.Handle, messages.DoneSubject(name)})
			if d.Fleet {
				background = append(background, func(ctx context.Context) {
					if fl := openFleet(ctx, js, d, log); fl != nil {
						coord := &FleetCoordinator{Fleet: fl, Conn: nc, SyncInterval: d.SyncInterval, Logger: log.With("fleet", "coordinator"),
							Newest: h.Newest, Observe: d.Metrics.ObserveFleet}
						coord.Run(ctx)
					}
				})
			}
		case messages.StageFetcher:
			if d.Downloader == nil {
				return nil, errors.New("fetcher stage needs a downloader")
			}
			h := &FetcherStage{Store: d.Store, Medium: medium, Requests: infra.Requests, Downloader: d.Downloader,
				Progress: progress, Logger: log, Metrics: d.Metrics, OriginTimeout: d.OriginTimeout}
			bindings = append(bindings, binding{name, name, messages.SubjectFetch, h.Handle, messages.DoneSubject(name)})
		case messages.StageVerifier:
			h := &VerifierStage{Store: d.Store, Medium: medium, Progress: progress, Logger: log, Metrics: d.Metrics}
			bindings = append(bindings, binding{name, name, messages.SubjectVerify, h.Handle, messages.DoneSubject(name)})
		case messages.StageConverter:
			h := &ConverterStage{Store: d.Store, Medium: medium, Requests: infra.Requests, Host: d.Host, CloneDir: d.CloneDir,
				Progress: progress, Concurrency: d.Concurrency, Logger: log, Metrics: d.Metrics,
				ReportCorrupt: func(ctx context.Context, bad *place.BadObjectError) error {
					return client.ReportCorrupt(ctx, js, bad.Ref, bad.Err.Error())
				}}
			consumers, done := medium.Converter(d.Host, d.TargetedOnly)
			for _, c := range consumers {
				bindings = append(bindings, binding{name, c.Name, c.Filters[0], h.Handle, done})
			}
			if d.Fleet {
				host := d.Host
				background = append(background, func(ctx context.Context) {
					fl := openFleet(ctx, js, d, log)
					if fl == nil {
						return
					}
					fh, err := newFleetHost(nc, fl, host, log)
					if err != nil {
						log.Warn("this host does not follow the fleet's selections", "err", err)
						return
					}
					fh.Store, fh.FreeGrace = d.Store, d.FleetFreeGrace
					fh.Run(ctx)
				})
			}
		case messages.StageCollector:
			h := &CollectorStage{Store: d.Store, Requests: infra.Requests, Host: d.Host, Medium: medium, Logger: log}
			// The collector's own failures are results, never done events.
			bindings = append(bindings, binding{name, name, messages.SubjectDone + ".>", h.Handle, ""})
		default:
			return nil, fmt.Errorf("unknown stage %q", name)
		}
		// The mode's own jobs where it wants them (the object store's healer
		// and orphan sweep beside the verifier, which may delete objects).
		upkeep := medium.Maintain(name, d, log)
		for _, m := range upkeep.Handlers {
			bindings = append(bindings, binding{name, m.Consumer, m.Filter, m.Handler, messages.DoneSubject(name)})
		}
		background = append(background, upkeep.Loops...)
	}
	queuedLimit := 0
	if slices.Contains(names, messages.StageResolver) {
		if err := AwaitJetStream(ctx, js, d.Logger, func(ctx context.Context) (err error) {
			queuedLimit, err = QueuedPerNamespace(ctx, js)
			return err
		}); err != nil {
			return nil, err
		}
	}
	var runners []*stage.Runner
	for _, b := range bindings {
		opts := append([]stage.Option{
			stage.WithConcurrency(d.Concurrency),
			stage.WithLogger(d.Logger),
			stage.WithFailure(FailurePolicy(b.name, b.done, d.Logger)),
			stage.WithDeadLetter(DeadLetterPolicy(b.name)),
			stage.WithObserver(d.Metrics.Observer()),
			stage.WithRetryNotify(retryProgress(b.name, progress)),
			// One namespace's flood must not hold up another's work.
			stage.WithFairness(namespaceKey, fairAhead(b.name, d)),
		}, d.RunnerOptions...)
		if b.filter == messages.SubjectPrepare {
			// Requests in a namespace: vmprep.prepare.<ns>.
			opts = append(opts, stage.WithMoreSubjects(messages.SubjectPrepare+".>"),
				stage.WithKeyLimit(queuedLimit, errQueuedLimit))
		}
		if b.name == messages.StageCollector {
			// It takes a done event only as its subject's publisher wrote
			// it, read as stored (CollectorStage.Handle).
			opts = append(opts, stage.WithWriters())
		}
		d.Metrics.Stage(b.consumer)
		var r *stage.Runner
		err := AwaitJetStream(ctx, js, d.Logger, func(ctx context.Context) (err error) {
			r, err = stage.New(ctx, js, messages.StreamWork, b.consumer, b.filter, classified(b.handler), opts...)
			return err
		})
		if err != nil {
			if b.consumer != b.name && errors.Is(err, stage.ErrCreateDenied) {
				err = fmt.Errorf("%w (for this host: vmprep setup --hosts %s)", err, d.Host)
			}
			return nil, err
		}
		runners = append(runners, r)
	}
	return &Stages{runners: runners, background: background}, nil
}

// fairAhead is how far a stage pulls ahead of its workers: how far back in
// the stream a fair turn can reach. The resolver and the collector do quick
// work and see everything (the consumer's MaxAckPending), so a flood is
// refused or passed at once; the fetcher, verifier and converter do long
// work spread over hosts, and a process holding a large backlog would
// leave the others idle, so they hold a few per worker.
func fairAhead(stageName string, d Deps) int {
	if d.FairAhead > 0 {
		return d.FairAhead
	}
	switch stageName {
	case messages.StageResolver, messages.StageCollector:
		return 0
	}
	return max(32, 8*d.Concurrency)
}

// leaseStall is the fetcher's takeover bound: d.LeaseStall (default
// DefaultLeaseStall), never less than twice the origin timeout, within which
// an honest holder whose origin went silent fails its lease.
func leaseStall(d Deps) time.Duration {
	stall := d.LeaseStall
	if stall <= 0 {
		stall = DefaultLeaseStall
	}
	origin := d.OriginTimeout
	if origin <= 0 {
		origin = DefaultOriginTimeout
	}
	return max(stall, 2*origin)
}

// openFleet binds the fleet bucket for the resolver's coordinator and a
// converter's host, or says why this process takes no part in the fleet.
func openFleet(ctx context.Context, js jetstream.JetStream, d Deps, log *slog.Logger) *fleetkv.Store {
	var fl *fleetkv.Store
	err := AwaitJetStream(ctx, js, log, func(ctx context.Context) (err error) {
		fl, err = fleetkv.Open(ctx, js, d.Replicas)
		return err
	})
	if err != nil {
		log.Warn("no fleet selections for this process (vmprep setup makes the bucket)", "err", err)
		return nil
	}
	return fl
}

// newFleetHost is the converter host's follower of its plan, asking in its
// own namespace (its user's name).
func newFleetHost(nc *nats.Conn, fl *fleetkv.Store, host string, log *slog.Logger) (*FleetHost, error) {
	c, err := client.New(nc, client.WithNamespace(FleetNamespace(host)))
	if err != nil {
		return nil, err
	}
	return &FleetHost{Fleet: fl, Client: c, Host: host, Logger: log.With("fleet", "host")}, nil
}
