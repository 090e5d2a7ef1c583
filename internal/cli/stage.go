package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"sync/atomic"
	"time"

	"github.com/vmprep/vmprep/internal/version"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/metrics"
	"github.com/vmprep/vmprep/internal/ops"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/place"
	"github.com/vmprep/vmprep/pkg/messages"
)

// StageMain is the whole main of a stage process: it runs RunStage until
// SIGINT/SIGTERM and returns the exit status.
func StageMain(command string, args []string, stderr io.Writer, stages ...string) int {
	ctx, stop := SignalContext()
	defer stop()
	return RunStage(ctx, command, args, stderr, stages...)
}

// RunStage parses flags, connects to NATS, opens the store, serves the
// metrics endpoint if asked, and runs the given stages until ctx ends, then
// drains. It returns the exit status: 2 for bad usage, 1 when it could not
// run (or NATS refused it), 0 after a clean stop.
func RunStage(ctx context.Context, command string, args []string, stderr io.Writer, stages ...string) int {
	fs := flag.NewFlagSet(command, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c Common
	c.RegisterConnection(fs)
	c.Register(fs)
	var rf ResolverFlags
	if slices.Contains(stages, messages.StageResolver) {
		rf.Register(fs)
	}
	var target TargetFlags
	if slices.Contains(stages, messages.StageConverter) {
		target.Register(fs)
	}
	var ff FetcherFlags
	if slices.Contains(stages, messages.StageFetcher) {
		ff.Register(fs)
	}
	var runner RunnerFlags
	runner.Register(fs)
	var leaseStall, sweepInterval, orphanGrace time.Duration
	if slices.Contains(stages, messages.StageFetcher) {
		fs.DurationVar(&leaseStall, "lease-stall", pipeline.DefaultLeaseStall, "take over another fetcher's download lease once its progress has not grown for this long (at least twice --origin-timeout)")
	}
	if slices.Contains(stages, messages.StageVerifier) {
		fs.DurationVar(&sweepInterval, "sweep-interval", pipeline.DefaultSweepInterval, "how often to delete orphaned object chunks (of puts interrupted before their meta)")
		fs.DurationVar(&orphanGrace, "orphan-grace", pipeline.DefaultOrphanGrace, "how old unreferenced object chunks must be to be deleted (above the put stall timeout, 30s)")
	}
	fs.Usage = Usage(fs, command+" [flags]\n\nRuns the "+JoinNames(stages)+" stage(s) of a vmprep deployment until SIGTERM, then drains.")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", command, fs.Arg(0))
		return 2
	}
	log, err := c.Logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", command, err)
		return 2
	}
	bucket, err := c.ObjectBucket()
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", command, err)
		return 2
	}
	if target.Target != "" {
		if err := messages.ValidateTarget(target.Target); err != nil {
			fmt.Fprintf(stderr, "%s: --target: %v\n", command, err)
			return 2
		}
	}
	if target.CloneDir != "" {
		// Checked before connecting: a converter that could never make a
		// clone should not start taking requests for them.
		if target.CloneDir, err = pipeline.CloneDir(target.CloneDir); err != nil {
			fmt.Fprintf(stderr, "%s: --clone-dir: %v\n", command, err)
			return 2
		}
	}
	if _, err := c.Options(); err != nil {
		log.Error("bad connection flags", "err", err)
		return 2
	}

	st, err := c.OpenStore(log)
	if err != nil {
		log.Error("cannot open the content store", "err", err)
		return 1
	}
	// A converter host's name: its targeted work, its consumer
	// converter_<host>, and its liveness key, which a per-host user's
	// permissions pin (vmprep users converters).
	host := target.Target
	if host == "" && slices.Contains(stages, messages.StageConverter) {
		host = place.HostName()
	}
	// The resolver coordinates the fleet; a converter follows its host's
	// plan only when it was named a host (--target or VMPREP_TARGET): a
	// shared converter (user converter) is no fleet host.
	fleet := !slices.Contains(stages, messages.StageConverter) || os.Getenv("VMPREP_TARGET") != ""
	fs.Visit(func(f *flag.Flag) { fleet = fleet || f.Name == "target" })
	deps := pipeline.Deps{
		Store:            st,
		Logger:           log,
		Concurrency:      c.Concurrency,
		ResolutionMaxAge: rf.MaxAge,
		SyncInterval:     rf.SyncInterval,
		Fleet:            fleet,
		FleetFreeGrace:   target.FreeGrace,
		OriginTimeout:    ff.OriginTimeout,
		RunnerOptions:    runner.Options(),
		ObjectBucket:     bucket,
		Replicas:         c.Replicas,
		Host:             host,
		TargetedOnly:     target.TargetedOnly,
		CloneDir:         target.CloneDir,
		LeaseStall:       leaseStall,
		SweepInterval:    sweepInterval,
		OrphanGrace:      orphanGrace,
	}
	if slices.Contains(stages, messages.StageResolver) {
		if deps.Resolver, err = rf.Resolver(log); err != nil {
			log.Error("cannot build the catalog", "err", err)
			return 1
		}
	}
	if slices.Contains(stages, messages.StageFetcher) {
		deps.Downloader = Downloader(log)
	}

	// The endpoint is up before NATS is reached, so that a probe sees the
	// process waiting (503) rather than nothing.
	var conn atomic.Pointer[nats.Conn]
	var bound atomic.Pointer[pipeline.Stages]
	live := func() error {
		if nc := conn.Load(); nc == nil || !nc.IsConnected() {
			return errors.New("not connected to NATS")
		}
		s := bound.Load()
		if s == nil {
			return errors.New("stages not started yet")
		}
		return s.Consuming()
	}
	ready := func() error {
		s := bound.Load()
		if s == nil {
			return errors.New("stages not bound to their consumers yet")
		}
		return s.Drift()
	}
	if c.MetricsListen != "" {
		reg := metrics.NewRegistry(version.Short())
		if deps.Metrics, err = metrics.New(reg); err != nil {
			log.Error("cannot set up metrics", "err", err)
			return 1
		}
		srv, err := metrics.Listen(c.MetricsListen, metrics.Handler(reg, live, ready), log)
		if err != nil {
			log.Error("cannot serve metrics", "err", err)
			return 1
		}
		defer srv.Close()
		log.Info("metrics listening", "addr", srv.Addr(), "url", "http://"+srv.Addr()+"/metrics")
	}

	name := "vmprep-" + command
	nc, err := c.Connect(name, log, true)
	if err != nil {
		log.Error("cannot connect", "err", err)
		return 1
	}
	defer nc.Close()
	conn.Store(nc)
	ctx, cancel := ClosedCause(ctx, nc)
	defer cancel()

	log.Info("starting", "stages", JoinNames(stages), "nats", c.RedactedURL(), "cache", st.Root(), "store", c.Store, "concurrency", c.Concurrency)
	s, err := pipeline.NewStages(ctx, nc, stages, deps)
	if err != nil {
		if ctx.Err() != nil {
			if cause := context.Cause(ctx); !errors.Is(cause, context.Canceled) {
				log.Error("cannot start the stages", "err", cause)
				return 1
			}
			log.Info("stopped before the stages started")
			return 0
		}
		log.Error("cannot start the stages", "err", err)
		return 1
	}
	bound.Store(s)
	if js, err := jetstream.New(nc); err == nil {
		hbCtx, stopHB := context.WithCancel(ctx)
		hbDone := make(chan struct{})
		go func() {
			defer close(hbDone)
			ops.Announce(hbCtx, js, stages, ops.Process{Name: name, Host: host, Version: version.Short(), Concurrency: c.Concurrency, Consumers: s.Names()}, s.Consuming, log)
		}()
		defer func() { stopHB(); <-hbDone }()
	}
	log.Info("serving", "stages", JoinNames(stages))
	s.Run(ctx)
	if cause := context.Cause(ctx); cause != nil && !errors.Is(cause, context.Canceled) {
		log.Error("stopped", "err", cause)
		return 1
	}
	log.Info("stopped")
	return 0
}
