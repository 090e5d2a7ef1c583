package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"path/filepath"
	"slices"

	"github.com/vmprep/vmprep/internal/cli"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/pkg/embedded"
	"github.com/vmprep/vmprep/pkg/messages"
	"github.com/vmprep/vmprep/pkg/store"
)

// runServe runs an embedded nats-server that other processes connect to, plus
// the chosen stages.
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:4222", "HOST:PORT for NATS clients (port 0 picks a free one)")
	jsDir := fs.String("jetstream-dir", "", "JetStream file storage (default: <cache-dir>/jetstream-serve)")
	stagesFlag := fs.String("stages", "all", "stages to run in this process: a comma-separated list of resolver, fetcher, verifier, converter, collector; or all; or none")
	var c cli.Common
	c.Register(fs)
	var rf cli.ResolverFlags
	rf.Register(fs)
	var target cli.TargetFlags
	target.Register(fs)
	var runner cli.RunnerFlags
	runner.Register(fs)
	fs.Usage = cli.Usage(fs, "vmprep serve [flags]")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	stages, err := pipeline.ParseStages(*stagesFlag)
	if err != nil {
		fmt.Fprintf(stderr, "vmprep serve: --stages: %v\n", err)
		return 2
	}
	log, err := c.Logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "vmprep serve: %v\n", err)
		return 2
	}
	bucket, err := c.ObjectBucket()
	if err != nil {
		fmt.Fprintf(stderr, "vmprep serve: %v\n", err)
		return 2
	}
	root := c.CacheDir
	if root == "" {
		if root, err = store.DefaultRoot(); err != nil {
			fmt.Fprintf(stderr, "vmprep serve: %v\n", err)
			return 1
		}
	}
	if *jsDir == "" {
		*jsDir = filepath.Join(root, "jetstream-serve")
	}
	opts := []embedded.Option{
		embedded.WithCacheDir(root), embedded.WithJetStreamDir(*jsDir), embedded.WithListen(*listen),
		embedded.WithStages(stages...), embedded.WithLogger(log), embedded.WithConcurrency(c.Concurrency),
		embedded.WithResolutionMaxAge(rf.MaxAge), embedded.WithRunnerOptions(runner.Options()...),
		embedded.WithObjectStore(bucket), embedded.WithReplicas(c.Replicas), embedded.WithHost(target.Target),
	}
	if target.TargetedOnly {
		opts = append(opts, embedded.WithTargetedOnly())
	}
	if slices.Contains(stages, messages.StageResolver) {
		catOpts, err := rf.CatalogOptions(log)
		if err != nil {
			fmt.Fprintf(stderr, "vmprep serve: %v\n", err)
			return 1
		}
		opts = append(opts, embedded.WithCatalog(catOpts...))
	}
	emb, err := embedded.Start(ctx, opts...)
	if err != nil {
		fmt.Fprintf(stderr, "vmprep serve: %v\n", err)
		return 1
	}
	// The first line on stdout is the URL, for scripts and tests.
	fmt.Fprintf(stdout, "nats: %s\n", emb.URL())
	log.Info("serving", "nats", emb.URL(), "jetstream", *jsDir, "stages", cli.JoinNames(stages))
	<-ctx.Done()
	log.Info("shutting down")
	if err := emb.Close(); err != nil {
		log.Error("stages stopped with an error", "err", err)
		return 1
	}
	return 0
}
