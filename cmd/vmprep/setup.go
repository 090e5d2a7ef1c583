package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vmprep/vmprep/internal/cli"
	"github.com/vmprep/vmprep/internal/fleetkv"
	"github.com/vmprep/vmprep/internal/objectstore"
	"github.com/vmprep/vmprep/internal/ops"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/pkg/messages"
)

// runSetup creates what a deployment's stages bind to: the streams, the
// key-value and object buckets and the stage consumers. With least-privilege
// users (deploy/nats/auth.conf) only the operator may create them.
func runSetup(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("setup", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c cli.Common
	c.RegisterConnection(fs)
	c.RegisterDeployment(fs)
	wait := fs.Duration("wait", time.Minute, "how long to wait for NATS and for a cluster that is still forming (\"no suitable peers for placement\") before giving up")
	ackWait := fs.Duration("ack-wait", 30*time.Second, "ack wait of the stage consumers (how soon a dead worker's message is redelivered): given, it is set on every one; not given, existing ones keep theirs")
	limits := registerLimits(fs)
	hostList := fs.String("hosts", "", "comma-separated converter hosts (their --target names): creates each host's consumer converter_<host>, which its own user may use but not create (see `vmprep users converters`)")
	fs.Usage = cli.Usage(fs, "vmprep setup [flags]\n\n"+
		"Creates the streams ("+strings.Join([]string{messages.StreamWork, messages.StreamResults, messages.StreamDead}, ", ")+"), the key-value buckets,\n"+
		"the object bucket of --store nats:BUCKET and the stages' consumers, as the operator (deploy/nats/auth.conf:\n"+
		"--user admin). Run it once before starting the stages, and again after an upgrade: it creates what is\n"+
		"missing, adds subjects a newer build consumes, and leaves everything else as it is (replicas and\n"+
		"retention an operator changed are kept; differences are warned about). --replicas 3 on a three-node cluster.\n"+
		"Every stream and bucket gets the size limits of the flags below (each run applies them again: a run\n"+
		"with other values updates them), and the limit of requests queued per namespace.\n"+
		"A consumer changed since setup made it (filters, deliver or ack settings, a pause) is restored: its stage\n"+
		"refuses to consume from it until then.")
	if ok, code := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() != 0 {
		return failf(stderr, 2, "vmprep setup", "unexpected argument %q", fs.Arg(0))
	}
	bucket, err := c.ObjectBucket()
	if err != nil {
		return failf(stderr, 2, "vmprep setup", "%v", err)
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		return failf(stderr, 2, "vmprep setup", "--replicas %d: want 1 to 5 (3 on a three-node cluster)", c.Replicas)
	}
	if *ackWait <= 0 {
		return failf(stderr, 2, "vmprep setup", "--ack-wait %s: want a positive duration", *ackWait)
	}
	lim, err := limits()
	if err != nil {
		return failf(stderr, 2, "vmprep setup", "%v", err)
	}
	hosts, err := cli.SplitHosts(*hostList)
	if err != nil {
		return failf(stderr, 2, "vmprep setup", "--hosts: %v", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	conn := opsConn{Connection: c.Connection}
	js, err := conn.connect("vmprep-setup", stderr)
	if err != nil {
		return failf(stderr, 1, "vmprep setup", "%v", err)
	}
	defer conn.close()
	// Nodes just started may not have formed their cluster yet: wait for it,
	// as the stages do. A cancel rather than a deadline bounds the wait, so
	// each JetStream call keeps its own short timeout.
	wctx, stopWaiting := context.WithCancel(ctx)
	defer stopWaiting()
	timer := time.AfterFunc(*wait, stopWaiting)
	_, err = pipeline.WaitForSetup(wctx, js, pipeline.SetupConfig{Replicas: c.Replicas, ObjectBucket: bucket, Logger: log})
	timer.Stop()
	if err != nil {
		return failf(stderr, 1, "vmprep setup", "%v", err)
	}
	if _, err := ops.ProcessBucket(ctx, js); err != nil {
		return failf(stderr, 1, "vmprep setup", "%v", err)
	}
	// Fleet selections (vmprep fleet), their builds, plans and host status.
	if _, err := fleetkv.Open(ctx, js, c.Replicas); err != nil {
		return failf(stderr, 1, "vmprep setup", "%v", err)
	}
	chosen := time.Duration(0) // existing consumers keep theirs
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "ack-wait" {
			chosen = *ackWait
		}
	})
	if err := pipeline.SetupConsumers(ctx, js, chosen, hosts, log); err != nil {
		return failf(stderr, 1, "vmprep setup", "%v", err)
	}
	consumers := pipeline.StageConsumers()
	if bucket != "" {
		// Reports of corrupt objects, healed by the verifier.
		if err := pipeline.SetupHealer(ctx, js, *ackWait, log); err != nil {
			return failf(stderr, 1, "vmprep setup", "%v", err)
		}
		consumers = append(consumers, pipeline.HealerConsumer())
	}
	limitRows, err := pipeline.ApplyLimits(ctx, js, lim,
		[]string{messages.BucketRequests, messages.BucketLeases, messages.BucketVerified, ops.BucketProcesses, fleetkv.Bucket}, bucket, log)
	if err != nil {
		return failf(stderr, 1, "vmprep setup", "%v", err)
	}

	streams := []string{messages.StreamWork, messages.StreamResults, messages.StreamDead,
		"KV_" + messages.BucketRequests, "KV_" + messages.BucketLeases, "KV_" + messages.BucketVerified, "KV_" + ops.BucketProcesses, "KV_" + fleetkv.Bucket}
	if bucket != "" {
		streams = append(streams, objectstore.StreamName(bucket))
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "STREAM\tREPLICAS\tSUBJECTS")
	for _, name := range streams {
		s, err := js.Stream(ctx, name)
		if err != nil {
			return failf(stderr, 1, "vmprep setup", "stream %s: %v", name, err)
		}
		cfg := s.CachedInfo().Config
		fmt.Fprintf(tw, "%s\t%d\t%s\n", name, cfg.Replicas, strings.Join(cfg.Subjects, " "))
	}
	fmt.Fprintln(tw, "\nCONSUMER\tACK WAIT\tSUBJECTS")
	for _, sc := range append(consumers, pipeline.TargetConsumers(hosts)...) {
		cons, err := js.Consumer(ctx, messages.StreamWork, sc.Name)
		if err != nil {
			return failf(stderr, 1, "vmprep setup", "consumer %s: %v", sc.Name, err)
		}
		cfg := cons.CachedInfo().Config
		filters := cfg.FilterSubjects
		if cfg.FilterSubject != "" {
			filters = []string{cfg.FilterSubject}
		}
		fmt.Fprintf(tw, "%s.%s\t%s\t%s\n", messages.StreamWork, sc.Name, cfg.AckWait, strings.Join(filters, " "))
	}
	if err := tw.Flush(); err != nil {
		return failf(stderr, 1, "vmprep setup", "%v", err)
	}
	if err := printLimits(stdout, limitRows, lim.QueuedPerNamespace); err != nil {
		return failf(stderr, 1, "vmprep setup", "%v", err)
	}
	return 0
}
