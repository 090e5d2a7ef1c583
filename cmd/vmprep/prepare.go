package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/gofrs/flock"
	"github.com/nats-io/nats.go"
	"github.com/vmprep/vmprep/internal/cli"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/messages"
	"github.com/vmprep/vmprep/pkg/pipeline"
	"github.com/vmprep/vmprep/pkg/stage"
	"github.com/vmprep/vmprep/pkg/store"
)

// defaultFormat is what the host's usual hypervisor boots: Apple
// Virtualization.framework needs raw; Cloud Hypervisor and QEMU take qcow2.
func defaultFormat() catalog.DiskFormat {
	if runtime.GOOS == "darwin" {
		return catalog.FormatRaw
	}
	return catalog.FormatQCOW2
}

// parseInterleaved parses flags that may come before or after positional
// arguments ("prepare ubuntu 24.04 --format raw").
func parseInterleaved(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func runPrepare(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("prepare", flag.ContinueOnError)
	fs.SetOutput(stderr)
	arch := fs.String("arch", "", "amd64|x86_64 or arm64|aarch64 (default: this host's)")
	format := fs.String("format", string(defaultFormat()), "disk format wanted: raw or qcow2")
	cacheDir := fs.String("cache-dir", os.Getenv(store.EnvCacheDir), "embedded mode: content store directory (env "+store.EnvCacheDir+"; default <user cache dir>/vmprep)")
	natsURL := fs.String("nats", "", "use a running vmprep deployment at this NATS URL instead of the embedded one (its stages' cache, catalog and mirror settings apply)")
	creds := fs.String("creds", os.Getenv("NATS_CREDS"), "NATS credentials file, with --nats")
	asJSON := fs.Bool("json", false, "print the result as JSON")
	requestID := fs.String("request-id", "", "request id (default: random); the same id yields the same one result")
	timeout := fs.Duration("timeout", 0, "give up after this long (default: no limit; slow downloads are fine while bytes flow)")
	logLevel := fs.String("log-level", "error", "embedded mode: stage log level, debug, info, warn or error (the outcome is always reported)")
	concurrency := fs.Int("concurrency", 3, "embedded mode: assets worked on at once by each stage")
	var rf cli.ResolverFlags
	rf.Register(fs)
	fs.Usage = cli.Usage(fs, "vmprep prepare [flags] DISTRO VERSION\n\n"+
		"Without --nats, all stages run in this process on an embedded NATS server.\n"+
		"With --nats, only --arch, --format, --json, --request-id, --timeout and --creds apply;\n"+
		"the deployment's own cache, catalog, mirror and keyring settings are used.")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if len(pos) != 2 {
		fmt.Fprintln(stderr, "vmprep prepare: want DISTRO VERSION, e.g. vmprep prepare ubuntu 24.04")
		return 2
	}
	spec := catalog.ImageSpec{Distro: pos[0], Version: pos[1]}
	if *arch != "" {
		a, err := catalog.ParseArch(*arch)
		if err != nil {
			fmt.Fprintf(stderr, "vmprep prepare: --arch: %v\n", err)
			return 2
		}
		spec.Arch = a
	}
	if spec, err = spec.Normalize(); err != nil {
		fmt.Fprintf(stderr, "vmprep prepare: %v\n", err)
		return 2
	}
	req := messages.PrepareRequest{RequestID: *requestID, Spec: spec, Format: catalog.DiskFormat(*format)}
	if req.RequestID == "" {
		req.RequestID = pipeline.NewRequestID()
	}
	if err := req.Validate(); err != nil {
		fmt.Fprintf(stderr, "vmprep prepare: %v\n", err)
		return 2
	}
	if *timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, *timeout)
		defer cancel()
	}
	common := cli.Common{LogLevel: *logLevel, LogFormat: "text"}
	log, err := common.Logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "vmprep prepare: %v\n", err)
		return 2
	}

	var nc *nats.Conn
	if *natsURL != "" {
		c := cli.Common{NATSURL: *natsURL, Creds: *creds}
		if nc, err = c.Connect("vmprep-prepare", log, false); err != nil {
			fmt.Fprintf(stderr, "vmprep prepare: %v\n", err)
			return 1
		}
		defer nc.Close()
	} else {
		emb, err := startLocal(*cacheDir, &rf, *concurrency, log)
		if err != nil {
			fmt.Fprintf(stderr, "vmprep prepare: %v\n", err)
			return 1
		}
		defer emb.close()
		nc = emb.Conn
	}

	bars := newProgressBars(ctx, stderr, !*asJSON && cli.IsTerminal(stderr))
	res, err := pipeline.Prepare(ctx, nc, req, bars.update)
	bars.finish(err == nil && res.Status == messages.ResultPrepared)
	if err != nil {
		fmt.Fprintf(stderr, "vmprep prepare: %s: %v\n", specLabel(spec), err)
		return 1
	}
	if res.Status != messages.ResultPrepared {
		cause := "failed without a reason"
		if res.Failure != nil {
			cause = res.Failure.Error()
		}
		if *asJSON {
			_ = json.NewEncoder(stdout).Encode(res)
		}
		fmt.Fprintf(stderr, "vmprep prepare: %s: %s\n", specLabel(spec), oneLine(cause))
		return 1
	}
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		if err := enc.Encode(res); err != nil {
			return 1
		}
		return 0
	}
	printResult(stdout, res)
	return 0
}

func specLabel(s catalog.ImageSpec) string {
	return fmt.Sprintf("%s %s %s", s.Distro, s.Version, s.Arch)
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func printResult(w io.Writer, r messages.Result) {
	if r.Kernel != "" {
		fmt.Fprintf(w, "kernel:     %s\n", r.Kernel)
	}
	if r.Initramfs != "" {
		fmt.Fprintf(w, "initramfs:  %s\n", r.Initramfs)
	}
	fmt.Fprintf(w, "disk:       %s (%s)\n", r.Disk, r.DiskFormat)
	if r.View != "" {
		fmt.Fprintf(w, "view:       %s\n", r.View)
	}
	switch {
	case r.Signer != "":
		fmt.Fprintf(w, "signed by:  %s\n", r.Signer)
	case r.Unsigned:
		fmt.Fprintln(w, "signed by:  nobody — the distribution publishes no signature for these checksums")
	}
	if r.ResolvedFrom == messages.ResolvedFromCache {
		fmt.Fprintln(w, "resolution: from the cache (no network needed)")
	}
}

// local is the single-binary mode: an embedded server, all stages, one store.
type local struct {
	*pipeline.Embedded
	lock *flock.Flock
	tmp  string
}

func (l *local) close() {
	if l.Embedded != nil {
		_ = l.Close()
	}
	if l.lock != nil {
		_ = l.lock.Unlock()
	}
	if l.tmp != "" {
		_ = os.RemoveAll(l.tmp)
	}
}

// startLocal runs every stage in this process on an embedded server whose
// JetStream files live under the cache dir. A second concurrent vmprep on the
// same cache gets its own temporary JetStream directory (the content store is
// safe to share; a JetStream directory is not).
func startLocal(cacheDir string, rf *cli.ResolverFlags, concurrency int, log *slog.Logger) (*local, error) {
	if cacheDir == "" {
		var err error
		if cacheDir, err = store.DefaultRoot(); err != nil {
			return nil, err
		}
	}
	st, err := store.Open(cacheDir, store.WithLogger(log))
	if err != nil {
		return nil, err
	}
	resolver, err := rf.Resolver(log)
	if err != nil {
		return nil, err
	}
	l := &local{}
	jsDir := filepath.Join(cacheDir, "jetstream")
	if err := os.MkdirAll(jsDir, 0o755); err != nil {
		return nil, err
	}
	l.lock = flock.New(filepath.Join(cacheDir, "jetstream.lock"))
	if ok, err := l.lock.TryLock(); err != nil || !ok {
		l.lock = nil
		if l.tmp, err = os.MkdirTemp(cacheDir, "jetstream-"); err != nil {
			return nil, err
		}
		jsDir = l.tmp
	}
	deps := pipeline.Deps{
		Store:            st,
		Resolver:         resolver,
		Downloader:       cli.Downloader(log),
		Logger:           log,
		Concurrency:      concurrency,
		ResolutionMaxAge: rf.MaxAge,
		// This process exits as soon as the result is in: short pulls make the
		// shutdown quick, and there is nothing left to drain then.
		RunnerOptions: []stage.Option{stage.WithPullWait(200 * time.Millisecond)},
	}
	emb, err := pipeline.StartEmbedded(jsDir, "", pipeline.AllStages, deps)
	if err != nil {
		l.close()
		return nil, err
	}
	l.Embedded = emb
	return l, nil
}
