package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"strings"
	"time"

	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/pkg/image"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/cli"
	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/objectstore"
	"github.com/vmprep/vmprep/internal/place"
	"github.com/vmprep/vmprep/internal/redact"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/embedded"
	"github.com/vmprep/vmprep/pkg/messages"
)

// defaultFormat is what the host's usual hypervisor boots: Apple
// Virtualization.framework needs raw; Cloud Hypervisor and QEMU take qcow2.
func defaultFormat() image.DiskFormat {
	if runtime.GOOS == "darwin" {
		return image.FormatRaw
	}
	return image.FormatQCOW2
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
	signals := ctx // ends on ^C or SIGTERM; ctx also ends on --timeout
	fs, pf := newPrepareFlags("prepare", stderr)
	arch, serial, format, cacheDir, target, namespace := pf.arch, pf.serial, pf.format, pf.cacheDir, pf.target, pf.namespace
	asJSON, requestID, timeout, progressFlag := pf.asJSON, pf.requestID, pf.timeout, pf.progress
	conn, common, rf := &pf.conn, &pf.common, &pf.rf
	fs.Usage = cli.Usage(fs, "vmprep prepare [flags] DISTRO VERSION\n\n"+
		"Without --nats, all stages run in this process on an embedded NATS server.\n"+
		"With --nats, the deployment resolves, fetches and verifies (its catalog, mirror and keyring\n"+
		"settings apply; --mirror, --keyring, --catalog, --allow-unsigned, --concurrency are ignored).\n"+
		"If it keeps content in an object store (--store nats:BUCKET), the files are pulled into\n"+
		"--cache-dir and converted here, and local paths are printed; with --target NAME they are\n"+
		"placed on that host instead. A deployment that shares one cache directory prints its paths.\n"+
		"With --nats, the credential and TLS flags (--creds, --user, --password-file, --tls-*) apply.")
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
	pmode, err := parseProgressMode(*progressFlag)
	if err != nil {
		fmt.Fprintf(stderr, "vmprep prepare: %v\n", err)
		return 2
	}
	pmode = pmode.resolve(stderr, *asJSON)
	spec := image.Spec{Distro: pos[0], Version: pos[1], Serial: *serial}
	if *arch != "" {
		a, err := image.ParseArch(*arch)
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
	req := messages.PrepareRequest{RequestID: *requestID, Spec: spec, Format: image.DiskFormat(*format), Target: *target}
	if *target != "" && conn.NATSURL == "" {
		fmt.Fprintln(stderr, "vmprep prepare: --target needs --nats (a deployment with converters on other hosts)")
		return 2
	}
	// With --nats and no target, this process pulls and converts itself.
	req.ClientConverts = conn.NATSURL != "" && *target == ""
	if req.RequestID == "" {
		req.RequestID = client.NewRequestID()
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
	log, err := common.Logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "vmprep prepare: %v\n", err)
		return 2
	}

	var embeddedOpts []embedded.Option
	if conn.NATSURL == "" {
		catOpts, err := rf.CatalogOptions(log)
		if err != nil {
			fmt.Fprintf(stderr, "vmprep prepare: %v\n", err)
			return 1
		}
		embeddedOpts = []embedded.Option{embedded.WithCacheDir(*cacheDir), embedded.WithCatalog(catOpts...),
			embedded.WithLogger(log), embedded.WithConcurrency(common.Concurrency),
			embedded.WithResolutionMaxAge(rf.MaxAge), embedded.WithShortPulls(), embedded.WithInteractive()}
		// A warm request (everything stored, the resolution young enough)
		// is answered from the store with the pipeline's own steps, without
		// starting a server: milliseconds instead of a server's start-up.
		// Not with --request-id: the deployment keeps what an id was used for.
		if *requestID == "" {
			if res, ok, err := embedded.FromStore(ctx, req, embeddedOpts...); err == nil && ok {
				return reportResult(stdout, stderr, res, spec, *asJSON)
			}
		}
	}

	var cl *client.Client
	var dep *embedded.Deployment
	var nc *nats.Conn // with --nats
	ns := *namespace
	if conn.NATSURL != "" {
		var err error
		nc, err = conn.Connect("vmprep-prepare", log, false)
		if err != nil {
			fmt.Fprintf(stderr, "vmprep prepare: %v\n", redact.Error(err))
			return 1
		}
		defer nc.Close()
		if ns == "" && conn.User != "" && messages.ValidateNamespace(conn.User) == nil {
			ns = conn.User
		}
		if cl, err = client.New(nc, client.WithNamespace(ns)); err != nil {
			fmt.Fprintf(stderr, "vmprep prepare: %v\n", err)
			return 1
		}
		for _, f := range []string{"mirror", "keyring", "catalog", "allow-unsigned", "concurrency"} {
			if flagSet(fs, f) {
				fmt.Fprintf(stderr, "vmprep prepare: warning: --%s is ignored with --nats (the deployment's own setting applies)\n", f)
			}
		}
	} else {
		// The stages run in this process until the result is in: short pulls
		// make the shutdown quick, and there is nothing left to drain then.
		var err error
		dep, err = embedded.Start(ctx, embeddedOpts...)
		if err != nil {
			fmt.Fprintf(stderr, "vmprep prepare: %v\n", err)
			return 1
		}
		defer func() {
			if dep != nil {
				_ = dep.Close()
			}
		}()
		cl = dep.Client()
	}

	bars := newProgressView(ctx, stderr, specLabel(spec), pmode)
	stopWatching := func() {}
	if nc != nil {
		wctx, stopWatch := context.WithCancel(ctx)
		watched := make(chan struct{})
		go func() {
			defer close(watched)
			watchStages(wctx, func() (*nats.Conn, error) { return conn.Connect("vmprep-prepare-watch", log, false) }, *target, bars.note, log)
		}()
		stopWatching = func() { stopWatch(); <-watched }
	}
	// A request the permissions refuse (another namespace) fails at once,
	// not after the publish's timeout.
	pctx, stopRefusals := stage.UntilDenied(ctx, nc, "")
	res, err := cl.Prepare(pctx, req, client.WithProgress(bars.update))
	stopRefusals()
	stopWatching()
	var failed *client.FailedError
	if errors.As(err, &failed) {
		err = nil // reported from the result below
	}
	bars.finish(err == nil && res.Status == messages.ResultPrepared)
	if err != nil && signals.Err() != nil {
		return interrupted(stderr, &dep, req.RequestID)
	}
	if refused := cli.PermissionRefusal(nc); err != nil && refused != nil {
		hint := "this user may not do this"
		if ns != conn.User {
			hint = fmt.Sprintf("namespace %q is not user %q's: with per-client permissions a client uses only its own, its user name", ns, conn.User)
		}
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			// It was only waiting for an answer the refusal never sends.
			err = fmt.Errorf("the server refused it: %v (%s)", refused, hint)
		} else {
			err = fmt.Errorf("%w: the server refused it: %v (%s)", err, refused, hint)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "vmprep prepare: %s: %v\n", specLabel(spec), redact.Error(err))
		return 1
	}
	if res.Status == messages.ResultPrepared && req.ClientConverts {
		if res, err = localize(ctx, cl, *cacheDir, res, stderr, pmode); err != nil {
			fmt.Fprintf(stderr, "vmprep prepare: %s: %v\n", specLabel(spec), err)
			return 1
		}
	}
	code := reportResult(stdout, stderr, res, spec, *asJSON)
	if conn.NATSURL != "" && !*asJSON {
		out := stdout
		if code != 0 {
			out = stderr
		}
		fmt.Fprint(out, requestLine(res))
	}
	return code
}

// prepareFlags are prepare's flags: vmprep clone, which prepares first,
// takes the same ones.
type prepareFlags struct {
	arch, serial, format, cacheDir, target, namespace, requestID *string
	progress                                                     *string
	asJSON                                                       *bool
	timeout                                                      *time.Duration
	conn                                                         cli.Connection
	common                                                       cli.Common
	rf                                                           cli.ResolverFlags
}

// newPrepareFlags makes a flag set named name with prepare's flags.
func newPrepareFlags(name string, stderr io.Writer) (*flag.FlagSet, *prepareFlags) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	p := &prepareFlags{}
	p.arch = fs.String("arch", "", "amd64|x86_64 or arm64|aarch64 (default: this host's)")
	p.serial = fs.String("serial", "", "pin one build (e.g. 20260926 for Ubuntu; see vmprep catalog DISTRO VERSION) instead of the newest; a result's resolved.serial repeats a build exactly")
	p.format = fs.String("format", string(defaultFormat()), "disk format wanted: raw or qcow2")
	p.cacheDir = fs.String("cache-dir", os.Getenv(content.EnvCacheDir), "content store directory where the files end up (env "+content.EnvCacheDir+"; default <user cache dir>/vmprep)")
	fs.StringVar(&p.conn.NATSURL, "nats", "", "use a running vmprep deployment at this NATS URL (comma-separated for a cluster) instead of the embedded one")
	p.conn.RegisterAuth(fs)
	p.conn.RegisterInsecure(fs)
	p.target = fs.String("target", "", "with --nats: the host that must end up with the files (a converter started with --target NAME); the result names it and its paths")
	p.namespace = fs.String("namespace", os.Getenv("VMPREP_NAMESPACE"), "with --nats: publish to vmprep.prepare.NAMESPACE and read results there, as a deployment that keeps clients apart requires (env VMPREP_NAMESPACE; default: the --user name, which deploy/nats/auth.conf makes each client's namespace)")
	p.asJSON = fs.Bool("json", false, "print the result as JSON")
	p.progress = fs.String("progress", string(progressAuto), "how to show progress on stderr: tty (lines redrawn in place), plain (a line per step and a progress line every 5 s or 10%: for logs, CI, pipes), none, or auto (tty on a terminal, else plain; none with --json)")
	p.requestID = fs.String("request-id", "", "request id (default: random); the same id yields the same one result")
	p.timeout = fs.Duration("timeout", 0, "give up after this long (default: no limit; slow downloads are fine while bytes flow)")
	p.common = cli.Common{LogFormat: "text"}
	p.common.RegisterEmbedded(fs, 3, "error")
	p.rf.Register(fs)
	return fs, p
}

// reportResult prints a result — its paths, or JSON — and returns the exit
// status: 0 when prepared, else 1 with the cause on stderr.
func reportResult(stdout, stderr io.Writer, res messages.Result, spec image.Spec, asJSON bool) int {
	if res.Status != messages.ResultPrepared {
		cause := "failed without a reason"
		if res.Failure != nil {
			cause = res.Failure.Error()
		}
		if asJSON {
			_ = json.NewEncoder(stdout).Encode(res)
		}
		fmt.Fprintf(stderr, "vmprep prepare: %s: %s\n", specLabel(spec), oneLine(cause))
		return 1
	}
	if asJSON {
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

// requestLine names a deployment's request the way vmprep status takes it,
// so that an operator can look it up.
func requestLine(r messages.Result) string {
	id := r.RequestID
	if r.Namespace != "" {
		// A client of a deployment that keeps namespaces apart may not run
		// vmprep status (it reads every namespace): the id is for its
		// operator, who may.
		id = r.Namespace + "." + id
		return fmt.Sprintf("request:    %s (for the operator: vmprep status %s)\n", id, id)
	}
	return fmt.Sprintf("request:    %s (vmprep status %s)\n", id, id)
}

// interrupted ends a prepare stopped by ^C (or SIGTERM). In embedded mode
// the stages' in-flight work is cancelled at once (no drain: a person waits
// for the prompt); each download writes what it has received and fsyncs it
// before returning, so the partial file and its sidecar in the ingest area
// resume on the next run. A second ^C quits at once (the signal's default
// action once the first has been taken). With --nats the deployment goes on.
func interrupted(stderr io.Writer, dep **embedded.Deployment, id string) int {
	if *dep == nil {
		fmt.Fprintf(stderr, "vmprep prepare: stopped waiting; the deployment goes on with request %s (--request-id %s waits for its result again)\n", id, id)
		return 130
	}
	fmt.Fprintln(stderr, "vmprep prepare: stopping: saving partial downloads")
	_ = (*dep).Close()
	*dep = nil
	fmt.Fprintln(stderr, "vmprep prepare: stopped; partial downloads are kept and resume on the next run")
	return 130
}

func specLabel(s image.Spec) string { return s.String() }

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

func printResult(w io.Writer, r messages.Result) {
	// A targeted result's paths are on the target host, not here: say so
	// before them.
	if r.Target != "" && r.Host != "" {
		fmt.Fprintf(w, "host:       %s (the paths below are on that host)\n", r.Host)
	}
	if r.Disk == "" {
		// No one host holds every file (they are objects in the store, or
		// on several hosts): say where each one is.
		for _, role := range []image.Role{image.RoleKernel, image.RoleInitramfs, image.RoleDisk} {
			if f, ok := r.Files[role]; ok {
				fmt.Fprintf(w, "%-11s %s\n", string(role)+":", fileWhere(f))
			}
		}
	} else {
		if r.Kernel != "" {
			fmt.Fprintf(w, "kernel:     %s\n", r.Kernel)
		}
		if r.Initramfs != "" {
			fmt.Fprintf(w, "initramfs:  %s\n", r.Initramfs)
		}
		fmt.Fprintf(w, "disk:       %s (%s)\n", r.Disk, r.DiskFormat)
	}
	if r.View != "" {
		fmt.Fprintf(w, "view:       %s\n", r.View)
	}
	if r.Resolved != nil && r.Resolved.Serial != "" {
		fmt.Fprintf(w, "serial:     %s (--serial %s prepares this build again)\n", r.Resolved.Serial, r.Resolved.Serial)
	}
	if r.Unpinned {
		fmt.Fprintln(w, "serial:     none — the mirror holds only release/ and does not say which build it is, so this build is unpinned (--serial cannot ask for it again)")
	}
	switch {
	case r.Signer != "":
		fmt.Fprintf(w, "signed by:  %s\n", r.Signer)
	case r.Unsigned:
		fmt.Fprintln(w, "signed by:  nobody — the distribution publishes no signature for these checksums")
	}
	if r.ResolvedFrom == messages.ResolvedFromCache {
		// Only the resolution: a file missing or corrupt in the cache was
		// still fetched (the progress lines say so).
		fmt.Fprintln(w, "resolution: from the cache (the manifests were not fetched again)")
	}
}

// fileWhere says where one file of a result is: a path on a host, or an
// object in the deployment's store (nats object get BUCKET NAME).
func fileWhere(f messages.File) string {
	var where string
	switch {
	case f.Path != "" && f.Host != "":
		where = f.Path + " on host " + f.Host
	case f.Path != "":
		where = f.Path
	case f.Object != nil:
		where = "object " + f.Object.Name + " in bucket " + f.Object.Bucket
	default:
		where = "nowhere this result names"
	}
	if f.Format != "" {
		where += " (" + string(f.Format) + ")"
	}
	return where
}

// flagSet reports whether the flag was given on the command line.
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

// localize brings a result's objects into the local cache (pulling,
// verifying, converting to raw, unpacking the kernel) and returns the
// result with local paths. A deployment that shares one cache directory
// returns files, not objects: its result is printed as it is.
func localize(ctx context.Context, cl *client.Client, cacheDir string, res messages.Result, stderr io.Writer, pmode progressMode) (messages.Result, error) {
	var bucket string
	for _, f := range res.Files {
		if f.Object != nil {
			bucket = f.Object.Bucket
		}
	}
	if bucket == "" {
		return res, nil
	}
	if cacheDir == "" {
		var err error
		if cacheDir, err = content.DefaultRoot(); err != nil {
			return res, err
		}
	}
	st, err := store.Open(cacheDir)
	if err != nil {
		return res, err
	}
	js, err := jetstream.New(cl.Conn())
	if err != nil {
		return res, err
	}
	objs, err := objectstore.Bind(ctx, js, bucket)
	if err != nil {
		return res, fmt.Errorf("the deployment's object store: %w", err)
	}
	bars := newProgressView(ctx, stderr, specLabel(res.Image()), pmode)
	p := &place.Placer{Store: st, Objects: objs, Progress: func(step string, role image.Role, done, total int64) {
		bars.update(messages.Progress{RequestID: res.RequestID, Stage: "client", Step: step, Asset: role, Done: done, Total: total})
	}}
	out, err := p.Localize(ctx, res, place.HostName())
	bars.finish(err == nil)
	var bad *place.BadObjectError
	if errors.As(err, &bad) {
		// This client may not delete the object: the deployment's healer
		// checks it and deletes it if it is bad, and the next request
		// fetches it again.
		if rerr := client.ReportCorrupt(ctx, js, bad.Ref, bad.Err.Error()); rerr != nil {
			return out, fmt.Errorf("%w (and reporting it failed: %v)", err, rerr)
		}
		return out, fmt.Errorf("%w: reported to the deployment, which deletes a bad object; a new request fetches it again", err)
	}
	return out, err
}
