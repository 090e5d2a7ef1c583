package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"slices"
	"sync/atomic"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/version"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/cli"
	"github.com/vmprep/vmprep/internal/metrics"
	"github.com/vmprep/vmprep/internal/natsembed"
	"github.com/vmprep/vmprep/internal/ops"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/redact"
	"github.com/vmprep/vmprep/pkg/embedded"
	"github.com/vmprep/vmprep/pkg/messages"
)

// runServe runs an embedded nats-server that other processes connect to, plus
// the chosen stages.
func runServe(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:4222", "HOST:PORT for NATS clients (port 0 picks a free one); with --config, the file's listen applies unless this is given")
	configFile := fs.String("config", "", "nats-server configuration file (users and permissions, accounts, TLS, cluster); JetStream is always on")
	insecure := fs.Bool("insecure", false, "allow listening on a non-loopback address without client authentication")
	jsDir := fs.String("jetstream-dir", "", "JetStream file storage (default: the --config file's store_dir, else <cache-dir>/jetstream-serve)")
	stagesFlag := fs.String("stages", "all", "stages to run in this process: a comma-separated list of resolver (which includes the collector, as the resolver binary does), fetcher, verifier, converter, collector; or all; or none")
	var c cli.Common
	c.RegisterAuth(fs)
	c.Register(fs)
	var rf cli.ResolverFlags
	rf.Register(fs)
	var target cli.TargetFlags
	target.Register(fs)
	var runner cli.RunnerFlags
	runner.Register(fs)
	var ff cli.FetcherFlags
	ff.Register(fs)
	fs.Usage = cli.Usage(fs, "vmprep serve [flags]\n\n"+
		"Runs a nats-server with JetStream and the chosen stages in this process. Its first line\n"+
		"on stdout is \"nats: <url>\". It refuses a non-loopback --listen unless the server\n"+
		"authenticates clients (--config with users, NKeys, JWTs or verified client certificates)\n"+
		"or --insecure is given. The stages in this process connect in-process; when the server\n"+
		"has users, they authenticate with --creds or --user/--password-file.")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "vmprep serve: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	fail := func(code int, format string, a ...any) int {
		fmt.Fprintf(stderr, "vmprep serve: "+format+"\n", a...)
		return code
	}
	stages, err := pipeline.ParseStages(*stagesFlag)
	if err != nil {
		return fail(2, "--stages: %v", err)
	}
	log, err := c.Logger(stderr)
	if err != nil {
		return fail(2, "%v", err)
	}
	bucket, err := c.ObjectBucket()
	if err != nil {
		return fail(2, "%v", err)
	}
	// The stages here connect in-process, where the server asks no TLS:
	// a CA or certificate (say NATS_CA in the environment) would make
	// nats.go insist on TLS over the pipe and fail.
	c.TLSCA, c.TLSCert, c.TLSKey = "", "", ""
	connOpts, err := c.Options()
	if err != nil {
		return fail(2, "%v", err)
	}
	srvOpts := natsembed.Options{}
	if *configFile != "" {
		if srvOpts.Config, err = natsembed.LoadConfig(*configFile); err != nil {
			return fail(2, "--config: %v", err)
		}
	}
	// The address the server will listen on: --listen, else the file's.
	host := ""
	if cfg := srvOpts.Config; cfg == nil || given["listen"] || (cfg.Host == "" && cfg.Port == 0) {
		srvOpts.Listen = *listen
		if host, _, err = net.SplitHostPort(*listen); err != nil {
			return fail(2, "--listen %q: %v", *listen, err)
		}
	} else {
		host = cfg.Host
	}
	// Every listener the server opens, not only the clients': a websocket,
	// MQTT or leafnode port reaches the same JetStream API, and a route or
	// gateway port lets a server in that bypasses every permission.
	listeners := []natsembed.Listener{{Kind: "client", Host: host}}
	if srvOpts.Config != nil {
		listeners = natsembed.Listeners(srvOpts.Config, host)
	}
	for _, l := range listeners {
		if l.Auth != "" || natsembed.Loopback(l.Host) {
			continue
		}
		where := l.Host
		if where == "" || where == "0.0.0.0" || where == "::" {
			where = "every interface"
		}
		if !*insecure {
			return fail(2, "refusing to open the %s listener on %s without authentication: %s. %s, or give --insecure to accept the risk",
				l.Kind, where, listenerRisk[l.Kind], listenerFix[l.Kind])
		}
		log.Warn("--insecure: listening without authentication", "listener", l.Kind, "host", l.Host)
	}

	root := c.CacheDir
	if root == "" {
		if root, err = content.DefaultRoot(); err != nil {
			return fail(1, "%v", err)
		}
	}
	switch {
	case *jsDir != "":
	case srvOpts.Config != nil && srvOpts.Config.StoreDir != "":
		*jsDir = srvOpts.Config.StoreDir
	default:
		*jsDir = filepath.Join(root, "jetstream-serve")
	}
	opts := []embedded.Option{
		embedded.WithCacheDir(root), embedded.WithJetStreamDir(*jsDir), embedded.WithListen(srvOpts.Listen),
		embedded.WithServerOptions(srvOpts.Config), embedded.WithConnectOptions(connOpts...),
		embedded.WithStages(stages...), embedded.WithLogger(log), embedded.WithConcurrency(c.Concurrency),
		embedded.WithResolutionMaxAge(rf.MaxAge), embedded.WithRunnerOptions(runner.Options()...), embedded.WithFleet(rf.SyncInterval),
		embedded.WithOriginTimeout(ff.OriginTimeout), embedded.WithObjectStore(bucket), embedded.WithReplicas(c.Replicas), embedded.WithHost(target.Target),
		embedded.WithCloneDir(target.CloneDir),
	}
	if target.TargetedOnly {
		opts = append(opts, embedded.WithTargetedOnly())
	}
	if slices.Contains(stages, messages.StageResolver) {
		catOpts, err := rf.CatalogOptions(log)
		if err != nil {
			return fail(1, "%v", err)
		}
		opts = append(opts, embedded.WithCatalog(catOpts...))
	}

	// The endpoint is up before the server, so that a probe sees it starting.
	var dep atomic.Pointer[embedded.Deployment]
	if c.MetricsListen != "" {
		reg := metrics.NewRegistry(version.Short())
		opts = append(opts, embedded.WithPrometheus(reg))
		live := func() error {
			if d := dep.Load(); d != nil {
				return d.Live()
			}
			return errors.New("starting")
		}
		ready := func() error {
			d := dep.Load()
			if d == nil {
				return errors.New("server and stages not started yet")
			}
			return d.Ready()
		}
		ms, err := metrics.Listen(c.MetricsListen, metrics.Handler(reg, live, ready), log)
		if err != nil {
			return fail(1, "%v", err)
		}
		defer ms.Close()
		log.Info("metrics listening", "addr", ms.Addr(), "url", "http://"+ms.Addr()+"/metrics")
	}
	d, err := embedded.Start(ctx, opts...)
	if err != nil {
		return fail(1, "%v", redact.Error(err))
	}
	dep.Store(d)
	// The first line on stdout is the URL, for scripts and tests.
	fmt.Fprintf(stdout, "nats: %s\n", d.URL())
	log.Info("serving", "nats", d.URL(), "jetstream", d.JetStreamDir(), "stages", cli.JoinNames(stages), "auth", authLabel(srvOpts.Config))
	hbDone := make(chan struct{})
	hbCtx, stopHB := context.WithCancel(ctx)
	go func() {
		defer close(hbDone)
		if len(stages) == 0 {
			return
		}
		js, err := jetstream.New(d.Conn())
		if err != nil {
			return
		}
		ops.Announce(hbCtx, js, stages, ops.Process{Name: "vmprep-serve", Version: version.Short(), Concurrency: c.Concurrency, Consumers: d.Consumers()}, d.Live, log)
	}()
	<-ctx.Done()
	log.Info("shutting down")
	stopHB()
	<-hbDone
	if err := d.Close(); err != nil {
		log.Error("shutdown incomplete", "err", err)
		return 1
	}
	return 0
}

// listenerRisk says what anyone who reaches an unauthenticated listener
// could do; listenerFix, how to close it.
var listenerRisk = map[string]string{
	"client":     "anyone who reaches the port could submit work and read results",
	"websocket":  "anyone who reaches the port could submit work and read results",
	"mqtt":       "anyone who reaches the port could publish and subscribe",
	"leafnode":   "any server that reaches the port could join as a leaf node and exchange messages",
	"cluster":    "any nats-server that reaches the port could join as a route, read every message and bypass every permission",
	"gateway":    "any nats-server that reaches the port could join as a gateway and exchange messages",
	"monitoring": "the monitoring port has no authentication and tells anyone the server's connections, subjects and streams",
	"profiling":  "the profiling port has no authentication",
}

var listenerFix = map[string]string{
	"client":     "Give --config a file with users (see deploy/nats-server.conf)",
	"websocket":  "Give the configuration users (or the websocket block an authorization of its own) and no no_auth_user",
	"mqtt":       "Give the configuration users (or the mqtt block an authorization of its own) and no no_auth_user",
	"leafnode":   "Give the configuration users (or the leafnodes block an authorization of its own)",
	"cluster":    "Give the cluster block an authorization (user and password: see deploy/nats/node1.conf) or a tls block with verify: true",
	"gateway":    "Give the gateway block an authorization or a tls block with verify: true",
	"monitoring": "Put http (or https) on 127.0.0.1 and a proxy with authentication in front",
	"profiling":  "Put prof_port on a loopback listen address, or remove it",
}

func authLabel(o *server.Options) string {
	if a := natsembed.ClientAuth(o); a != "" {
		return a
	}
	return "none"
}
