// Package cli holds the flags, logging and wiring shared by vmprep's commands,
// so that each stage's main stays a few lines long.
package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/lmittmann/tint"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/download"
	"github.com/vmprep/vmprep/internal/objectstore"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/place"
	"github.com/vmprep/vmprep/internal/resolve"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/messages"
	"github.com/vmprep/vmprep/pkg/signature"
)

func envOr(key, def string) string {
	if v, ok := os.LookupEnv(key); ok && v != "" {
		return v
	}
	return def
}

func envInt(key string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(key)); err == nil {
		return v
	}
	return def
}

// Common are the flags every stage process takes, with environment fallbacks.
type Common struct {
	Connection
	CacheDir      string
	Concurrency   int
	LogLevel      string
	LogFormat     string
	MetricsListen string
	Store         string
	Replicas      int
}

// Register adds the flags every stage-running process takes (cache, logging,
// concurrency).
func (c *Common) Register(fs *flag.FlagSet) {
	fs.StringVar(&c.CacheDir, "cache-dir", envOr(content.EnvCacheDir, ""), "content store directory, shared by the stages of a host (env "+content.EnvCacheDir+"; default: <user cache dir>/vmprep)")
	fs.IntVar(&c.Concurrency, "concurrency", envInt("VMPREP_CONCURRENCY", 2), "messages worked on at once by each stage in this process (env VMPREP_CONCURRENCY)")
	fs.StringVar(&c.LogLevel, "log-level", envOr("VMPREP_LOG_LEVEL", "info"), "debug, info, warn or error (env VMPREP_LOG_LEVEL)")
	fs.StringVar(&c.LogFormat, "log-format", envOr("VMPREP_LOG_FORMAT", "text"), "text or json (env VMPREP_LOG_FORMAT); services want json")
	fs.StringVar(&c.MetricsListen, "metrics-listen", envOr("VMPREP_METRICS_LISTEN", ""), "HOST:PORT serving /metrics (Prometheus), /healthz and /readyz (env VMPREP_METRICS_LISTEN; default: off)")
	c.RegisterDeployment(fs)
}

// RegisterDeployment adds --store and --replicas: what the streams and
// buckets are (the stages, and vmprep setup, which creates them).
func (c *Common) RegisterDeployment(fs *flag.FlagSet) {
	fs.StringVar(&c.Store, "store", envOr("VMPREP_STORE", "local"), "where verified content lives: local (the stages share --cache-dir on one host) or nats:BUCKET "+
		"(a JetStream Object Store bucket, for stages on separate hosts; --cache-dir is then this process's own cache) (env VMPREP_STORE)")
	fs.IntVar(&c.Replicas, "replicas", envInt("VMPREP_REPLICAS", 1), "replicas of the streams and buckets this process creates if missing: 1, or 3 on a three-node cluster (env VMPREP_REPLICAS)")
}

// RegisterEmbedded adds --concurrency and --log-level, with the environment
// variables the stage processes read (VMPREP_CONCURRENCY, VMPREP_LOG_LEVEL),
// to a command that runs the stages in its own process (vmprep prepare), with
// that command's defaults.
func (c *Common) RegisterEmbedded(fs *flag.FlagSet, concurrency int, logLevel string) {
	fs.IntVar(&c.Concurrency, "concurrency", envInt("VMPREP_CONCURRENCY", concurrency), "embedded mode: assets worked on at once by each stage (env VMPREP_CONCURRENCY)")
	fs.StringVar(&c.LogLevel, "log-level", envOr("VMPREP_LOG_LEVEL", logLevel), "embedded mode: stage log level, debug, info, warn or error; the outcome is always reported (env VMPREP_LOG_LEVEL)")
}

// ObjectBucket parses --store: "" for local, else the bucket name.
func (c *Common) ObjectBucket() (string, error) {
	return ParseStore(c.Store)
}

// ParseStore reads a --store value: "local" (or "") is the shared cache
// directory, "nats:BUCKET" a JetStream Object Store bucket.
func ParseStore(s string) (string, error) {
	switch {
	case s == "" || s == "local":
		return "", nil
	case strings.HasPrefix(s, "nats:"):
		bucket := strings.TrimPrefix(s, "nats:")
		if err := objectstore.ValidBucket(bucket); err != nil {
			return "", fmt.Errorf("--store %s: %w", s, err)
		}
		return bucket, nil
	}
	return "", fmt.Errorf("--store %q: want local or nats:BUCKET", s)
}

// TargetFlags are the converter's host flags.
type TargetFlags struct {
	Target       string
	TargetedOnly bool
	CloneDir     string
	FreeGrace    time.Duration
}

// Register adds the converter's flags to fs.
func (t *TargetFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&t.Target, "target", envOr("VMPREP_TARGET", place.HostName()), "this host's name: with --store nats:…, the converter takes the work of requests targeted at it (env VMPREP_TARGET; default: the host name)")
	fs.BoolVar(&t.TargetedOnly, "targeted-only", false, "with --store nats:…, take only work targeted at --target, not untargeted conversions that any converter may do")
	fs.StringVar(&t.CloneDir, "clone-dir", os.Getenv("VMPREP_CLONE_DIR"), "with --store nats:…, make the clones that requests targeted at --target ask for in this directory (they name only files in it); empty: make none (env VMPREP_CLONE_DIR)")
	fs.DurationVar(&t.FreeGrace, "fleet-free-grace", 15*time.Minute, "fleet selections: never free a build's files committed more recently than this (they may be on their way into a view); negative: no grace")
}

// Logger builds the logger the flags ask for: text through tint (coloured on a
// terminal) or JSON.
func (c *Common) Logger(w io.Writer) (*slog.Logger, error) {
	var level slog.Level
	if err := level.UnmarshalText([]byte(c.LogLevel)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", c.LogLevel)
	}
	switch c.LogFormat {
	case "text":
		return slog.New(tint.NewTextHandler(w, &tint.Options{Level: level, TimeFormat: time.TimeOnly, NoColor: !IsTerminal(w)})), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: level, ReplaceAttr: durationsAsText})), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", c.LogFormat)
}

// durationsAsText writes a duration as "1.5s", as the text logs do, instead
// of the JSON handler's nanoseconds (1500000000), which nobody reads right.
func durationsAsText(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() == slog.KindDuration {
		a.Value = slog.StringValue(a.Value.Duration().String())
	}
	return a
}

// IsTerminal reports whether w is a character device (a terminal).
func IsTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	fi, err := f.Stat()
	return err == nil && fi.Mode()&os.ModeCharDevice != 0
}

// OpenStore opens the content store the flags name.
func (c *Common) OpenStore(log *slog.Logger) (*store.Store, error) {
	root := c.CacheDir
	if root == "" {
		var err error
		if root, err = content.DefaultRoot(); err != nil {
			return nil, err
		}
	}
	return store.Open(root, content.WithLogger(log))
}

// Downloader builds the download engine with vmprep's defaults.
func Downloader(log *slog.Logger) *download.Client {
	return download.New(download.WithLogger(log))
}

// ResolverFlags configure the catalog and resolver.
type ResolverFlags struct {
	Mirror        string
	Keyring       string
	CatalogFile   string
	AllowUnsigned bool
	MaxAge        time.Duration
	SyncInterval  time.Duration
}

// Register adds the resolver flags to fs.
func (r *ResolverFlags) Register(fs *flag.FlagSet) {
	fs.StringVar(&r.Mirror, "mirror", envOr("VMPREP_MIRROR", ""), "base URL replacing every catalog host: the root that contains the upstream paths, e.g. for Ubuntu the directory holding releases/ (http://mirror.example/ubuntu-cloud/, not …/releases/); it must carry the build directories (releases/24.04/release-<serial>/) and their listings (env VMPREP_MIRROR)")
	fs.StringVar(&r.Keyring, "keyring", envOr("VMPREP_KEYRING", ""), "OpenPGP keyring file whose keys replace the built-in trusted keys (env VMPREP_KEYRING)")
	fs.StringVar(&r.CatalogFile, "catalog", envOr("VMPREP_CATALOG", ""), "user catalog file (JSON or YAML) adding images; see docs/catalog.md (env VMPREP_CATALOG)")
	fs.BoolVar(&r.AllowUnsigned, "allow-unsigned", false, "resolve images whose manifests have no configured signing key (e.g. Fedora without --keyring) without signature verification; logs a warning. Published or configured signatures are still required")
	fs.DurationVar(&r.MaxAge, "resolution-max-age", 24*time.Hour, "reuse a stored resolution this young without asking the network")
	fs.DurationVar(&r.SyncInterval, "sync-interval", time.Hour, "how often to look for new builds of the fleet's followed selections (vmprep fleet sync: now)")
}

// CatalogOptions turns the flags into catalog options (mirror, user catalog,
// keyring, unsigned images).
func (r *ResolverFlags) CatalogOptions(log *slog.Logger) ([]catalog.Option, error) {
	var opts []catalog.Option
	if r.Mirror != "" {
		opts = append(opts, catalog.WithMirror(r.Mirror))
	}
	if r.CatalogFile != "" {
		opts = append(opts, catalog.WithFile(r.CatalogFile))
	}
	if r.Keyring != "" {
		kr, err := signature.LoadKeyringFile(r.Keyring)
		if err != nil {
			return nil, fmt.Errorf("--keyring: %w", err)
		}
		opts = append(opts, catalog.WithKeyring(kr))
	}
	if r.AllowUnsigned {
		log.Warn("--allow-unsigned: images without a configured signing key will be resolved without signature verification")
		opts = append(opts, catalog.WithAllowUnsigned(true))
	}
	return opts, nil
}

// Resolver builds the catalog and resolver the flags describe.
func (r *ResolverFlags) Resolver(log *slog.Logger) (*resolve.Resolver, error) {
	opts, err := r.CatalogOptions(log)
	if err != nil {
		return nil, err
	}
	cat, err := catalog.New(opts...)
	if err != nil {
		return nil, err
	}
	return resolve.New(cat, resolve.WithLogger(log)), nil
}

// SignalContext is cancelled on SIGINT or SIGTERM; a second signal then gets
// the default behaviour and kills the process (say, during a long drain).
func SignalContext() (context.Context, context.CancelFunc) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	context.AfterFunc(ctx, stop)
	return ctx, stop
}

// RunnerFlags are the delivery settings of stage runners.
type RunnerFlags struct {
	Drain      time.Duration
	AckWait    time.Duration
	MaxDeliver int
	DriftCheck time.Duration
}

// Register adds the runner flags to fs.
func (r *RunnerFlags) Register(fs *flag.FlagSet) {
	fs.DurationVar(&r.Drain, "drain-timeout", 30*time.Second, "on SIGTERM, how long in-flight work may finish before it is handed back")
	fs.DurationVar(&r.AckWait, "ack-wait", 30*time.Second, "how soon a dead worker's message is redelivered (in-progress acks keep live work); applies when the consumer is created")
	fs.IntVar(&r.MaxDeliver, "max-deliver", 5, "deliveries of one message before its request fails")
	fs.DurationVar(&r.DriftCheck, "drift-check", 30*time.Second, "how often a stage checks that its consumer is as vmprep setup made it (it takes no work from one that was changed)")
}

// Options turns the flags into stage runner options.
func (r *RunnerFlags) Options() []stage.Option {
	return []stage.Option{stage.WithDrainTimeout(r.Drain), stage.WithAckWait(r.AckWait), stage.WithMaxDeliver(r.MaxDeliver), stage.WithDriftCheck(r.DriftCheck)}
}

// FetcherFlags are the fetcher stage's.
type FetcherFlags struct {
	OriginTimeout time.Duration
}

// Register adds the fetcher flags to fs.
func (f *FetcherFlags) Register(fs *flag.FlagSet) {
	fs.DurationVar(&f.OriginTimeout, "origin-timeout", pipeline.DefaultOriginTimeout,
		"how long an origin may send no bytes before the asset fails for good, naming its URL and the last cause (every request waiting on it fails too)")
}

// Usage formats a flag set's usage with a one-line synopsis.
func Usage(fs *flag.FlagSet, synopsis string) func() {
	return func() {
		fmt.Fprintf(fs.Output(), "usage: %s\n", synopsis)
		n := 0
		fs.VisitAll(func(*flag.Flag) { n++ })
		if n > 0 {
			fmt.Fprintln(fs.Output(), "\nflags:")
			fs.PrintDefaults()
		}
	}
}

// JoinNames formats a list for messages.
func JoinNames(names []string) string { return strings.Join(names, ", ") }

// SplitHosts reads a comma-separated list of converter host names (their
// --target names), each checked, without repeats.
func SplitHosts(list string) ([]string, error) {
	var hosts []string
	for _, h := range strings.Split(list, ",") {
		h = strings.TrimSpace(h)
		if h == "" {
			continue
		}
		if err := messages.ValidateTarget(h); err != nil {
			return nil, err
		}
		if !slices.Contains(hosts, h) {
			hosts = append(hosts, h)
		}
	}
	return hosts, nil
}
