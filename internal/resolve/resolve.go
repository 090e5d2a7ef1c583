// Package resolve turns an image spec into verified asset digests: it
// fetches the checksum manifests a catalog.Plan names (small files only),
// verifies their OpenPGP signatures before using any entry, and looks up
// each asset. It downloads no image content and knows nothing of NATS.
package resolve

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"runtime/debug"
	"time"

	"github.com/ProtonMail/go-crypto/openpgp/clearsign"

	"github.com/vmprep/vmprep/internal/manifest"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/signature"
)

// Defaults.
const (
	DefaultMaxManifestSize = 4 << 20
	defaultTimeout         = time.Minute
)

// Option configures New.
type Option func(*Resolver)

// WithHTTPClient sets the client (default: http.Client's defaults). The
// resolver uses a copy whose redirect policy also refuses https → http
// downgrades; each attempt is bounded by WithTimeout whatever c's own
// Timeout is.
func WithHTTPClient(c *http.Client) Option {
	return func(r *Resolver) {
		if c != nil {
			r.client = c
		}
	}
}

// WithTimeout bounds each fetch attempt, body included (default one
// minute), so a server that stalls or trickles its answer cannot hold a
// resolution longer than attempts × d plus the pauses between them.
func WithTimeout(d time.Duration) Option {
	return func(r *Resolver) {
		if d > 0 {
			r.attemptTimeout = d
		}
	}
}

// WithUserAgent sets the User-Agent header (default "vmprep/<module version>").
func WithUserAgent(ua string) Option { return func(r *Resolver) { r.userAgent = ua } }

// WithLogger sets the logger for warnings about unsigned resolutions and
// debug notes on retries (default: discard).
func WithLogger(l *slog.Logger) Option { return func(r *Resolver) { r.logger = l } }

// WithMaxManifestSize caps manifests and clearsigned files (default 4 MiB).
func WithMaxManifestSize(n int64) Option {
	return func(r *Resolver) {
		if n > 0 {
			r.maxManifest = n
		}
	}
}

// WithRetry sets how many times a fetch is tried (at least 1; default 4)
// and the first pause between tries, which doubles up to 16 times that
// (default 500ms).
func WithRetry(attempts int, initialInterval time.Duration) Option {
	return func(r *Resolver) {
		r.attempts = max(attempts, 1)
		if initialInterval > 0 {
			r.initialBackoff = initialInterval
		}
	}
}

// WithBusyBudget keeps asking a server that answers it is busy — 429,
// a 5xx, or a connection it drops — for up to d from a fetch's first try,
// beyond the WithRetry count, honouring its Retry-After; a host that cannot
// be reached at all (no such name, no route, nothing listening) still fails
// after the count. Interactive callers use it: a few retries 1 s apart fail
// fast when offline, but lose a run to three 503s from a server that is up.
func WithBusyBudget(d time.Duration) Option { return func(r *Resolver) { r.busyBudget = d } }

// Resolver resolves specs against a catalog. It is safe for concurrent use.
type Resolver struct {
	cat            *catalog.Catalog
	client         *http.Client
	userAgent      string
	logger         *slog.Logger
	maxManifest    int64
	attempts       int
	initialBackoff time.Duration
	attemptTimeout time.Duration
	busyBudget     time.Duration
}

// New returns a resolver for cat.
func New(cat *catalog.Catalog, opts ...Option) *Resolver {
	r := &Resolver{
		cat:            cat,
		client:         &http.Client{},
		userAgent:      defaultUserAgent(),
		logger:         slog.New(slog.NewTextHandler(io.Discard, nil)),
		maxManifest:    DefaultMaxManifestSize,
		attempts:       4,
		initialBackoff: 500 * time.Millisecond,
		attemptTimeout: defaultTimeout,
	}
	for _, o := range opts {
		o(r)
	}
	r.client = guardRedirects(r.client)
	return r
}

// maxRedirects matches net/http's default limit.
const maxRedirects = 10

// guardRedirects returns a copy of c that refuses to follow a redirect from
// https to plain http: an unsigned manifest (Debian) is only as trustworthy
// as its transport, and a downgrade would hand it to anyone on the path.
// Redirects to other hosts stay allowed: download.fedoraproject.org sends
// every request to a mirror, and signed manifests are verified anyway.
func guardRedirects(c *http.Client) *http.Client {
	guarded := *c
	next := c.CheckRedirect
	guarded.CheckRedirect = func(req *http.Request, via []*http.Request) error {
		if len(via) >= maxRedirects {
			return fmt.Errorf("stopped after %d redirects", maxRedirects)
		}
		if req.URL.Scheme != "https" {
			for _, prev := range via {
				if prev.URL.Scheme == "https" {
					return fmt.Errorf("%w: %s redirected to %s", ErrInsecureRedirect, via[len(via)-1].URL.Redacted(), req.URL.Redacted())
				}
			}
		}
		if next != nil {
			return next(req, via)
		}
		return nil
	}
	return &guarded
}

func defaultUserAgent() string {
	v := "dev"
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		v = bi.Main.Version
	}
	return "vmprep/" + v
}

// verified is a manifest whose signature (if any) has been checked.
type verified struct {
	url   string
	m     *manifest.Manifest
	trust image.Trust
}

// Resolve fetches and verifies the manifests for spec and returns its
// assets with their expected digests. For an image with serials it reads
// everything from one serial's directory: spec.Serial's, or else the newest
// listed (Resolution.Spec.Serial names it). A serial that is not published
// fails with an error wrapping *UnknownSerialError. Errors are *Error.
func (r *Resolver) Resolve(ctx context.Context, spec image.Spec) (catalog.Resolution, error) {
	plan, err := r.cat.Plan(spec)
	if errors.Is(err, catalog.ErrSerialRequired) {
		// The newest build, read from its own directory: never from one
		// that is repointed while we read it.
		serials, lerr := r.Serials(ctx, spec)
		if errors.Is(lerr, ErrUnpinned) {
			return r.resolveUnpinned(ctx, spec) // what is published now, unlabelled
		}
		if lerr != nil {
			return catalog.Resolution{}, lerr
		}
		spec.Serial = serials[0].Serial
		if serials[0].Unpinned {
			return r.resolveUnpinned(ctx, spec)
		}
		plan, err = r.cat.Plan(spec)
	}
	if err != nil {
		return catalog.Resolution{}, &Error{Spec: spec, Op: OpPlan, Err: err}
	}
	res, err := r.resolvePlan(ctx, plan)
	if err == nil || !errors.Is(err, ErrNotFound) || plan.Spec.Serial == "" {
		return res, err
	}
	serials, lerr := r.Serials(ctx, plan.Spec)
	if lerr == nil && len(serials) == 1 && serials[0].Unpinned && serials[0].Serial == plan.Spec.Serial {
		// A mirror in the classic layout whose build is the one asked for.
		return r.resolveUnpinned(ctx, plan.Spec)
	}
	return catalog.Resolution{}, r.explainMissing(plan.Spec, err, serials, lerr)
}

// resolvePlan fetches and verifies the manifests plan names and looks up
// its assets.
func (r *Resolver) resolvePlan(ctx context.Context, plan catalog.Plan) (catalog.Resolution, error) {
	roots, err := r.cat.Roots(plan.Spec)
	if err != nil {
		return catalog.Resolution{}, &Error{Spec: plan.Spec, Op: OpPlan, Err: err}
	}
	manifests := map[string]*verified{}
	res := catalog.Resolution{Spec: plan.Spec, BootMode: plan.BootMode, Roots: &roots}
	for _, a := range plan.Assets {
		id := a.Manifest.ID()
		if a.Manifest.Format == catalog.ManifestSingle {
			id += "\x00" + a.Name // parsed per asset: the digest binds to its name
		}
		v, ok := manifests[id]
		if !ok {
			var err error
			if v, err = r.loadManifest(ctx, plan, a); err != nil {
				return catalog.Resolution{}, err
			}
			manifests[id] = v
		}
		asset, err := r.lookup(plan, a, v)
		if err != nil {
			return catalog.Resolution{}, err
		}
		res.Assets = append(res.Assets, asset)
	}
	res.ResolvedAt = time.Now().UTC()
	return res, nil
}

// Roots returns the trust roots a resolution of spec rests on: the
// keyring, catalog entry and mirror this resolver reads it with
// (catalog.Catalog.Roots). Its errors are the catalog's.
func (r *Resolver) Roots(spec image.Spec) (catalog.TrustRoots, error) {
	return r.cat.Roots(spec)
}

func (r *Resolver) lookup(plan catalog.Plan, a catalog.PlannedAsset, v *verified) (image.Asset, error) {
	fail := func(err error) error { return &Error{Spec: plan.Spec, Op: OpLookup, URL: v.url, Err: err} }
	name := a.Name
	if name == "" {
		var names []string
		for _, e := range v.m.Entries() {
			// The name becomes the last element of the asset URL: only plain
			// file names in the manifest's directory qualify, whatever a
			// loose user pattern would match.
			if plainFileName(e.Name) {
				names = append(names, e.Name)
			}
		}
		var ok bool
		if name, ok = greatestMatch(names, a.NamePattern); !ok {
			return image.Asset{}, fail(fmt.Errorf("%s: %w %s among %d entries", a.Role, ErrNoMatch, a.NamePattern, len(names)))
		}
	}
	d, err := v.m.Lookup(name)
	if err != nil {
		return image.Asset{}, fail(fmt.Errorf("%s %q: %w", a.Role, name, err))
	}
	size, _ := v.m.Size(name)
	return image.Asset{
		Role:   a.Role,
		Name:   name,
		URL:    a.URLFor(name),
		Digest: d,
		Size:   max(size, 0),
		Format: a.Format,
		Trust:  v.trust,
	}, nil
}

// loadManifest finds, fetches and verifies the manifest of asset a, then parses it.
func (r *Resolver) loadManifest(ctx context.Context, plan catalog.Plan, a catalog.PlannedAsset) (*verified, error) {
	mp := a.Manifest
	spec := plan.Spec
	manifestURL := mp.URL
	if manifestURL == "" {
		u, err := r.discover(ctx, spec, mp)
		if err != nil {
			return nil, err
		}
		manifestURL = u
	}
	data, ferr := r.fetch(ctx, manifestURL, r.maxManifest, nil)
	if ferr != nil {
		return nil, &Error{Spec: spec, Op: OpManifest, URL: manifestURL, Retryable: ferr.retryable, Err: ferr.err}
	}
	trust := image.Trust{ManifestURL: manifestURL}
	plaintext := data
	unsigned := func(note string) {
		trust.Note = note
		r.logger.WarnContext(ctx, "checksum manifest is not signature-verified",
			"spec", spec.String(), "manifest", manifestURL, "reason", note)
	}
	switch {
	case mp.Signature == catalog.SignatureNone:
		unsigned(mp.UnsignedNote)

	case mp.Keyring == nil:
		// Only reachable with allow-unsigned: the catalog refuses otherwise.
		unsigned(fmt.Sprintf("allow-unsigned was set and no key is configured for %s: the %s signature was not checked", spec.Distro, mp.Signature))
		if mp.Signature == catalog.SignatureClearsigned {
			plaintext = clearsignedText(data)
		}

	case mp.Signature == catalog.SignatureDetached:
		trust.SignatureURL = mp.SignatureURL
		sig, ferr := r.fetch(ctx, mp.SignatureURL, signature.MaxSignatureSize, nil)
		// A key is configured, so a signature is required even with
		// allow-unsigned: accepting a missing one would let anyone who can
		// tamper with the manifest also strip (404) its signature, making
		// "a bad signature is refused" meaningless.
		switch {
		case ferr != nil && isNotFound(ferr.err):
			return nil, &Error{Spec: spec, Op: OpSignature, URL: manifestURL,
				Err: fmt.Errorf("%w: %s: %w", signature.ErrNoSignature, mp.SignatureURL, ferr.err)}
		case ferr != nil:
			return nil, &Error{Spec: spec, Op: OpSignature, URL: manifestURL, Retryable: ferr.retryable,
				Err: fmt.Errorf("%s: %w", mp.SignatureURL, ferr.err)}
		default:
			signer, err := mp.Keyring.VerifyDetached(bytes.NewReader(data), sig)
			if err != nil {
				return nil, &Error{Spec: spec, Op: OpVerify, URL: manifestURL,
					Err: fmt.Errorf("signature %s against %s: %w", mp.SignatureURL, mp.KeyringSource, err)}
			}
			trust.Signed, trust.Signer = true, signer.Fingerprint
		}

	case mp.Signature == catalog.SignatureClearsigned:
		text, signer, err := mp.Keyring.VerifyClearsigned(data)
		if err != nil {
			return nil, &Error{Spec: spec, Op: OpVerify, URL: manifestURL,
				Err: fmt.Errorf("clearsigned manifest against %s: %w", mp.KeyringSource, err)}
		}
		plaintext = text
		trust.Signed, trust.Signer = true, signer.Fingerprint

	default:
		return nil, &Error{Spec: spec, Op: OpVerify, URL: manifestURL, Err: fmt.Errorf("unknown signature kind %q", mp.Signature)}
	}

	opts := []manifest.Option{manifest.WithMaxSize(r.maxManifest)}
	if mp.Format == catalog.ManifestSingle {
		opts = append(opts, manifest.WithSingleFile(a.Name))
	}
	m, err := manifest.Parse(bytes.NewReader(plaintext), opts...)
	if err != nil {
		return nil, &Error{Spec: spec, Op: OpParse, URL: manifestURL, Err: err}
	}
	return &verified{url: manifestURL, m: m, trust: trust}, nil
}

// clearsignedText extracts the (unverified) text of a clearsigned file, or
// returns data unchanged if it is not clearsigned.
func clearsignedText(data []byte) []byte {
	if b, _ := clearsign.Decode(data); b != nil {
		return b.Plaintext
	}
	return data
}

// discover finds the manifest's file name in the directory listing at IndexURL.
func (r *Resolver) discover(ctx context.Context, spec image.Spec, mp catalog.ManifestPlan) (string, error) {
	body, ferr := r.fetchListing(ctx, mp.IndexURL)
	if ferr != nil {
		return "", &Error{Spec: spec, Op: OpIndex, URL: mp.IndexURL, Retryable: ferr.retryable, Err: ferr.err}
	}
	names := listedNames(body)
	name, ok := greatestMatch(names, mp.Pattern)
	if !ok {
		return "", &Error{Spec: spec, Op: OpIndex, URL: mp.IndexURL,
			Err: fmt.Errorf("%w: no manifest matching %s among %d links", ErrNoMatch, mp.Pattern, len(names))}
	}
	return mp.IndexURL + url.PathEscape(name), nil
}

// plainFileName reports whether name can stand as one URL path element:
// not empty, ".", or "..", and free of slashes and control characters.
func plainFileName(name string) bool {
	if name == "" || name == "." || name == ".." {
		return false
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c == '/' || c == '\\' || c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// greatestMatch returns the greatest name, in natural order, that re matches.
func greatestMatch(names []string, re *regexp.Regexp) (string, bool) {
	var best string
	found := false
	for _, n := range names {
		if re.MatchString(n) && (!found || naturalLess(best, n)) {
			best, found = n, true
		}
	}
	return best, found
}

// naturalLess orders names with digit runs compared as numbers (see
// image.CompareNatural), so compose "1.10" sorts after "1.9".
func naturalLess(a, b string) bool { return image.CompareNatural(a, b) < 0 }

func isNotFound(err error) bool { return errors.Is(err, ErrNotFound) }
