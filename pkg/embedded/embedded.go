// Package embedded runs a whole vmprep deployment inside the calling process:
// a nats-server with JetStream (in-process only, or listening) and every
// stage, on one content store. It is the single-binary mode of vmprep
// prepare and vmprep serve, and what a backend's own tests use to get a real
// deployment without running anything else:
//
//	d, err := embedded.Start(ctx, embedded.WithCacheDir(t.TempDir()), embedded.WithCatalog(catalog.WithMirror(url)))
//	defer d.Close()
//	res, err := d.Client().Prepare(ctx, client.Request{Spec: image.Spec{Distro: "ubuntu", Version: "24.04"}})
package embedded

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/download"
	"github.com/vmprep/vmprep/internal/filelock"
	"github.com/vmprep/vmprep/internal/metrics"
	"github.com/vmprep/vmprep/internal/natsembed"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/place"
	"github.com/vmprep/vmprep/internal/resolve"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/messages"
)

// Stage names, for WithStages.
const (
	StageResolver  = messages.StageResolver
	StageFetcher   = messages.StageFetcher
	StageVerifier  = messages.StageVerifier
	StageConverter = messages.StageConverter
	StageCollector = messages.StageCollector
)

type config struct {
	cacheDir      string
	jsDir         string
	listen        string
	stages        []string
	catalogOpts   []catalog.Option
	resolveOpts   []resolve.Option
	downloadOpts  []download.Option
	runnerOpts    []stage.Option
	logger        *slog.Logger
	concurrency   int
	maxAge        time.Duration
	originTimeout time.Duration
	shortPulls    bool
	objectBucket  string
	replicas      int
	host          string
	targetedOnly  bool
	cloneDir      string
	fleet         bool
	syncInterval  time.Duration
	serverOpts    *server.Options
	connOpts      []nats.Option
	registerer    prometheus.Registerer
	interactive   bool
}

// Option configures Start.
type Option func(*config)

// WithCacheDir sets the content store directory (default: store.DefaultRoot,
// i.e. $VMPREP_CACHE_DIR or <user cache dir>/vmprep).
func WithCacheDir(dir string) Option { return func(c *config) { c.cacheDir = dir } }

// WithJetStreamDir sets where the server keeps its JetStream files (default
// <cache dir>/jetstream, locked by <cache dir>/jetstream.lock; when another
// process holds that lock, a temporary directory under the cache dir that is
// removed on Close).
func WithJetStreamDir(dir string) Option { return func(c *config) { c.jsDir = dir } }

// WithListen makes the server accept network clients on addr ("host:port";
// port 0 picks a free one). Without it, only in-process clients connect.
func WithListen(addr string) Option { return func(c *config) { c.listen = addr } }

// WithStages runs only the named stages (default: all). With none, the
// deployment is a bare NATS server that stage processes elsewhere join.
func WithStages(names ...string) Option {
	return func(c *config) { c.stages = append([]string{}, names...) }
}

// WithCatalog passes options to the catalog: a mirror, a keyring, a user
// catalog file, allowing unsigned images.
func WithCatalog(opts ...catalog.Option) Option {
	return func(c *config) { c.catalogOpts = append(c.catalogOpts, opts...) }
}

// WithResolveOptions passes options to the resolver (timeouts, retries).
// Its option type is internal: this module's commands and tests tune it;
// outside callers get the defaults (see docs/ARCHITECTURE.md, Supported API).
func WithResolveOptions(opts ...resolve.Option) Option {
	return func(c *config) { c.resolveOpts = append(c.resolveOpts, opts...) }
}

// WithDownloadOptions passes options to the download engine (an internal
// option type, like WithResolveOptions').
func WithDownloadOptions(opts ...download.Option) Option {
	return func(c *config) { c.downloadOpts = append(c.downloadOpts, opts...) }
}

// WithRunnerOptions passes options to every stage runner (retries, ack
// wait; an internal option type, like WithResolveOptions').
func WithRunnerOptions(opts ...stage.Option) Option {
	return func(c *config) { c.runnerOpts = append(c.runnerOpts, opts...) }
}

// WithLogger sets the stages' logger (default: discard).
func WithLogger(l *slog.Logger) Option { return func(c *config) { c.logger = l } }

// WithConcurrency sets how many messages each stage works on at once (default 3).
func WithConcurrency(n int) Option { return func(c *config) { c.concurrency = n } }

// WithOriginTimeout sets how long an origin may send no bytes before the
// fetcher fails the asset for good (default 3 minutes).
func WithOriginTimeout(d time.Duration) Option { return func(c *config) { c.originTimeout = d } }

// WithResolutionMaxAge reuses a stored resolution this young without asking
// the network (default 0: always ask, falling back to the stored one offline).
func WithResolutionMaxAge(d time.Duration) Option { return func(c *config) { c.maxAge = d } }

// WithShortPulls makes the stages poll briefly, so a short-lived process
// (one prepare, then exit) shuts down at once.
func WithShortPulls() Option { return func(c *config) { c.shortPulls = true } }

// WithInteractive is for a person waiting on a terminal (vmprep prepare):
// failures are retried fewer times and sooner, so that an offline run fails
// in seconds, saying why, instead of in a minute. Each retry is announced in
// the request's progress events either way. A delivery is tried 3 times, 1 s
// and then 2 s apart (stage processes: --max-deliver 5, backoff 1 s doubling
// up to 30 s), and that is the only retry of a resolution (the resolver
// itself tries each file once instead of 4 times — except that a server
// answering it is busy, 503, 429 or a reset, is asked again for
// InteractiveBusyBudget, honouring its Retry-After); a download gives up
// after 4 tries in a row without progress, 0.5 s up to 4 s apart (8 tries,
// 1 s up to 60 s) — bytes gained renew that budget, so a slow or flaky
// download still goes on. Stopping (Close, or Start's context ending)
// cancels in-flight work at once instead of letting it finish within a
// drain timeout: downloads keep what they wrote, flushed to disk, and resume
// on the next run. Options given explicitly override these.
func WithInteractive() Option { return func(c *config) { c.interactive = true } }

// InteractiveBusyBudget is how long an interactive resolution keeps asking
// a server that answers it is busy (WithInteractive).
const InteractiveBusyBudget = 30 * time.Second

// interactiveBackoff paces redeliveries while a person waits: 1 s, then 2 s.
func interactiveBackoff() backoff.BackOff { return stage.Exponential(time.Second, 2*time.Second, 0) }

// WithObjectStore keeps verified content in the JetStream Object Store
// bucket (created if missing): stage processes on other hosts joining this
// server then share it, each with its own cache directory.
func WithObjectStore(bucket string) Option { return func(c *config) { c.objectBucket = bucket } }

// WithReplicas sets the replicas of streams and buckets created (default 1).
func WithReplicas(n int) Option { return func(c *config) { c.replicas = n } }

// WithHost names this host (results, and the converter's target; default:
// the host name).
func WithHost(name string) Option { return func(c *config) { c.host = name } }

// WithTargetedOnly makes the converter take only work targeted at its host.
func WithTargetedOnly() Option { return func(c *config) { c.targetedOnly = true } }

// WithCloneDir is the directory where the converter makes the clones that
// requests targeted at its host ask for (PrepareRequest.Clones; needs an
// object store). Without it the converter refuses such requests.
func WithCloneDir(dir string) Option { return func(c *config) { c.cloneDir = dir } }

// WithFleet makes the deployment keep the fleet's selections (vmprep fleet):
// its resolver looks for new builds every syncInterval (0: hourly) and
// rolls them out, and its converter holds what its host's plan names.
func WithFleet(syncInterval time.Duration) Option {
	return func(c *config) { c.fleet, c.syncInterval = true, syncInterval }
}

// WithServerOptions starts the server from a nats-server configuration (say,
// one read by server.ProcessConfigFile: users, accounts, TLS, cluster).
// WithListen and WithJetStreamDir, when given, override its listener and
// JetStream directory; JetStream is always on.
func WithServerOptions(o *server.Options) Option { return func(c *config) { c.serverOpts = o } }

// WithConnectOptions adds options to the deployment's own connections (they
// are in-process, so TLS does not apply, but credentials do: a server with
// users needs nats.UserInfo or nats.UserCredentials here).
func WithConnectOptions(opts ...nats.Option) Option {
	return func(c *config) { c.connOpts = append(c.connOpts, opts...) }
}

// WithPrometheus registers the deployment's vmprep_* metrics (deliveries by
// stage and outcome, durations, in-flight work, dead letters, bytes from the
// origin) on reg.
func WithPrometheus(reg prometheus.Registerer) Option { return func(c *config) { c.registerer = reg } }

// Deployment is a running embedded deployment.
type Deployment struct {
	emb    *pipeline.Embedded
	store  *store.Store
	client *client.Client
	lock   *filelock.Lock
	tmp    string
	jsDir  string

	closeOnce sync.Once
	closeErr  error
}

// Start starts the server and the stages; they run until ctx ends or Close
// is called. Close must be called either way to release the server.
func Start(ctx context.Context, opts ...Option) (*Deployment, error) {
	c := config{stages: pipeline.AllStages, concurrency: 3}
	for _, o := range opts {
		o(&c)
	}
	if c.logger == nil {
		c.logger = slog.New(slog.DiscardHandler)
	}
	if c.interactive {
		// No drain: a person pressed ^C and waits for the prompt. In-flight
		// work is cancelled at once; a download keeps (and flushes) what it
		// has, and the next run resumes it.
		c.runnerOpts = append([]stage.Option{stage.WithMaxDeliver(3), stage.WithBackoff(interactiveBackoff), stage.WithDrainTimeout(0)}, c.runnerOpts...)
		// One try per delivery, except that a server answering it is busy
		// (503, 429, a reset) is asked again for 30 s, as it asks.
		c.resolveOpts = append([]resolve.Option{resolve.WithRetry(1, time.Second), resolve.WithBusyBudget(InteractiveBusyBudget)}, c.resolveOpts...)
		c.downloadOpts = append([]download.Option{download.WithRetry(4, download.DefaultMaxElapsed), download.WithBackoff(500*time.Millisecond, 4*time.Second)}, c.downloadOpts...)
	}
	if c.cacheDir == "" {
		var err error
		if c.cacheDir, err = content.DefaultRoot(); err != nil {
			return nil, err
		}
	}
	d := &Deployment{}
	var err error
	if d.store, err = store.Open(c.cacheDir, content.WithLogger(c.logger)); err != nil {
		return nil, err
	}
	if err := d.lockJetStreamDir(ctx, c.cacheDir, c.jsDir); err != nil {
		return nil, err
	}
	deps := pipeline.Deps{
		Store:            d.store,
		Logger:           c.logger,
		Concurrency:      c.concurrency,
		ResolutionMaxAge: c.maxAge,
		OriginTimeout:    c.originTimeout,
		RunnerOptions:    c.runnerOpts,
		ObjectBucket:     c.objectBucket,
		Replicas:         c.replicas,
		Host:             c.host,
		TargetedOnly:     c.targetedOnly,
		CloneDir:         c.cloneDir,
		Fleet:            c.fleet,
		SyncInterval:     c.syncInterval,
	}
	if c.registerer != nil {
		if deps.Metrics, err = metrics.New(c.registerer); err != nil {
			d.release()
			return nil, err
		}
	}
	if c.shortPulls {
		deps.RunnerOptions = append([]stage.Option{stage.WithPullWait(200 * time.Millisecond)}, deps.RunnerOptions...)
	}
	for _, s := range c.stages {
		switch s {
		case StageResolver:
			cat, err := catalog.New(c.catalogOpts...)
			if err != nil {
				_ = d.release()
				return nil, err
			}
			deps.Resolver = resolve.New(cat, append([]resolve.Option{resolve.WithLogger(c.logger)}, c.resolveOpts...)...)
		case StageFetcher:
			deps.Downloader = download.New(append([]download.Option{download.WithLogger(c.logger)}, c.downloadOpts...)...)
		}
	}
	d.emb, err = pipeline.StartEmbeddedServer(ctx, natsembed.Options{StoreDir: d.jsDir, Listen: c.listen, Config: c.serverOpts}, c.connOpts, c.stages, deps)
	if err != nil {
		_ = d.release()
		return nil, err
	}
	if d.emb.Conn != nil {
		d.client, _ = client.New(d.emb.Conn)
	}
	return d, nil
}

// FromStore answers req from the content store alone — without starting a
// server or any stage — when the deployment would find everything done: the
// image's resolution is stored and may be used without the network (a
// pinned serial's, or one younger than WithResolutionMaxAge), and every file
// and conversion is stored and still matches its stamp. The result is the
// one Start's deployment would give (the view is linked the same way), in
// milliseconds instead of the time a server takes to start. ok is false when
// the request needs the deployment: Start one and Prepare. A request with a
// target or whose client converts is never answered here, and nothing is
// recorded under its id: use it for requests with fresh ids (an empty
// RequestID gets one). Options other than the cache directory, catalog,
// resolution age and host are ignored.
func FromStore(ctx context.Context, req client.Request, opts ...Option) (res client.Result, ok bool, err error) {
	var c config
	for _, o := range opts {
		o(&c)
	}
	if c.cacheDir == "" {
		if c.cacheDir, err = content.DefaultRoot(); err != nil {
			return client.Result{}, false, err
		}
	}
	if c.host == "" {
		c.host = place.HostName()
	}
	if req.RequestID == "" {
		req.RequestID = client.NewRequestID()
	}
	cat, err := catalog.New(c.catalogOpts...)
	if err != nil {
		return client.Result{}, false, err
	}
	st, err := store.Open(c.cacheDir, content.WithLogger(c.logger))
	if err != nil {
		return client.Result{}, false, err
	}
	res, ok = pipeline.Warm(ctx, st, cat, c.maxAge, c.host, req)
	return res, ok, nil
}

// lockJetStreamDir picks the JetStream directory: the one asked for, else
// <cache>/jetstream if no other process uses it, else a private temporary
// one (a content store is safe to share between processes; a JetStream
// directory is not).
func (d *Deployment) lockJetStreamDir(ctx context.Context, cacheDir, asked string) error {
	if asked != "" {
		d.jsDir = asked
		return os.MkdirAll(asked, 0o755)
	}
	d.jsDir = filepath.Join(cacheDir, "jetstream")
	if err := os.MkdirAll(d.jsDir, 0o755); err != nil {
		return err
	}
	if l, ok, err := filelock.TryAcquire(ctx, filepath.Join(cacheDir, "jetstream.lock")); err == nil && ok {
		d.lock = l
		return nil
	}
	tmp, err := os.MkdirTemp(cacheDir, "jetstream-")
	if err != nil {
		return fmt.Errorf("embedded: private JetStream directory: %w", err)
	}
	d.tmp, d.jsDir = tmp, tmp
	return nil
}

// release gives the JetStream directory back: unlocks the shared one or
// removes the private one.
func (d *Deployment) release() error {
	var errs []error
	if d.lock != nil {
		if err := d.lock.Unlock(); err != nil {
			errs = append(errs, fmt.Errorf("embedded: unlock the JetStream directory: %w", err))
		}
	}
	if d.tmp != "" {
		if err := os.RemoveAll(d.tmp); err != nil {
			errs = append(errs, fmt.Errorf("embedded: remove the private JetStream directory: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Client returns a client of this deployment (nil for a server that
// authenticates clients, runs no stages and was given no credentials).
func (d *Deployment) Client() *client.Client { return d.client }

// Conn returns an in-process client connection to the server (nil when
// Client is).
func (d *Deployment) Conn() *nats.Conn { return d.emb.Conn }

// URL is the address network clients use ("" without WithListen).
func (d *Deployment) URL() string { return d.emb.Server.ClientURL() }

// Store is the deployment's store (internal/store: its methods, such as Root,
// are callable; the type cannot be named outside this module).
func (d *Deployment) Store() *store.Store { return d.store }

// JetStreamDir is where the server keeps its JetStream files.
func (d *Deployment) JetStreamDir() string { return d.jsDir }

// Consumers lists the durable consumers its stages pull from (one per
// stage; a converter with a host also has converter_<host>).
func (d *Deployment) Consumers() []string { return d.emb.Consumers() }

// Live reports nil while the deployment's stages are connected and
// consuming, else why not: what a liveness probe asks.
func (d *Deployment) Live() error { return d.emb.Live() }

// Ready reports nil while the stages' consumers are as setup made them,
// else what differs (see stage.ConsumerDrift).
func (d *Deployment) Ready() error { return d.emb.Ready() }

// Close drains the stages, stops the server and releases the JetStream
// directory (the error says if that failed). It may be called more than
// once, also after Start's context ended.
func (d *Deployment) Close() error {
	d.closeOnce.Do(func() {
		d.emb.Close()
		d.closeErr = d.release()
	})
	return d.closeErr
}
