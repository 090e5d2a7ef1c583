package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/download"
	"github.com/vmprep/vmprep/internal/metrics"
	"github.com/vmprep/vmprep/internal/place"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// ProgressFunc receives progress events (the stage processes publish them on
// core NATS; nothing depends on their delivery).
type ProgressFunc func(messages.Progress)

// throttled calls report at most every interval (and always for the final call).
func throttled(interval time.Duration, report ProgressFunc) func(p messages.Progress) {
	var mu sync.Mutex
	var last time.Time
	return func(p messages.Progress) {
		if report == nil {
			return
		}
		mu.Lock()
		now := time.Now()
		due := now.Sub(last) >= interval || (p.Total > 0 && p.Done >= p.Total)
		if due {
			last = now
		}
		mu.Unlock()
		if due {
			report(p)
		}
	}
}

// maxRefetch bounds how often one request re-fetches an asset whose object
// turned out bad.
const maxRefetch = 2

// leaseKey is the download lease of content d.
func leaseKey(d digest.Digest) string { return string(d.Algorithm) + "." + d.Hex }

// FetcherStage downloads an asset from its origin into the deployment's
// medium (see Medium.Fetch), for the verifier. An asset already there is
// not fetched again.
type FetcherStage struct {
	Store *store.Store
	// Medium is where the fetched bytes go.
	Medium Medium
	// Requests, if set, lets the fetcher skip assets of requests that already failed.
	Requests   *Requests
	Downloader *download.Client
	Progress   ProgressFunc
	Logger     *slog.Logger
	// Metrics, if set, counts bytes from the origin and into the object
	// store, and lease waits.
	Metrics *metrics.Metrics
	// OriginTimeout bounds how long an origin may send no bytes before the
	// asset fails for good, however its attempts fail (default
	// DefaultOriginTimeout): see fromOrigin.
	OriginTimeout time.Duration

	// failures remembers, per digest, a download that just failed for good
	// on this host, so that requests waiting on the store's lock for it are
	// answered with that failure instead of starting the wait again.
	failures sync.Map // leaseKey → recentFailure
}

// DefaultOriginTimeout is how long an origin may send no bytes before the
// fetcher fails the asset (FetcherStage.OriginTimeout, --origin-timeout).
const DefaultOriginTimeout = 3 * time.Minute

// recentFailure is a download that failed for good, and when.
type recentFailure struct {
	err error
	at  time.Time
}

// failureMemory is how long a failed download answers those waiting for
// it: they were queued on its lock, so they wake within moments.
const failureMemory = 30 * time.Second

func (s *FetcherStage) originTimeout() time.Duration {
	if s.OriginTimeout > 0 {
		return s.OriginTimeout
	}
	return DefaultOriginTimeout
}

// ErrOriginGone: the origin sent no bytes for the fetcher's origin timeout.
var ErrOriginGone = errors.New("origin stopped answering")

// OriginGoneError is an asset given up because its origin sent nothing for
// For; Last is the last attempt's failure.
type OriginGoneError struct {
	URL  string
	For  time.Duration
	Last error
}

func (e *OriginGoneError) Error() string {
	return fmt.Sprintf("%v: no bytes from %s for %v (--origin-timeout); last cause: %v", ErrOriginGone, e.URL, e.For, e.Last)
}

// Is makes errors.Is(err, ErrOriginGone) true.
func (e *OriginGoneError) Is(target error) bool { return target == ErrOriginGone }

// Unwrap exposes the last cause.
func (e *OriginGoneError) Unwrap() error { return e.Last }

// errOriginSilent cancels a download whose origin sent nothing for the timeout.
var errOriginSilent = errors.New("no bytes from the origin for the origin timeout")

// fromOrigin downloads the asset, starting the download client's attempts
// again each time its own budget runs out, until the origin has sent no
// byte for the origin timeout: then the asset fails for good with an
// *OriginGoneError naming the URL and the last cause. One delivery thus
// ends the asset within about the timeout (plus one stall timeout) of the
// origin falling silent, and no redelivery or lease takeover starts the
// wait again. moved, if set, counts bytes for a lease; announce, if set,
// is told once of a download's first bytes (see download).
func (s *FetcherStage) fromOrigin(ctx context.Context, ev messages.AssetEvent, moved *atomic.Int64, announce func(messages.AssetEvent)) (download.Result, error) {
	limit := s.originTimeout()
	var lastByte atomic.Int64
	lastByte.Store(time.Now().UnixNano())
	var seen atomic.Int64
	seen.Store(-1)
	onBytes := func(done int64) {
		if seen.Swap(done) != done {
			lastByte.Store(time.Now().UnixNano())
		}
		if moved != nil {
			moved.Store(done)
		}
	}
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	go func() {
		t := time.NewTicker(max(limit/16, 10*time.Millisecond))
		defer t.Stop()
		for {
			select {
			case <-wctx.Done():
				return
			case <-t.C:
			}
			if time.Since(time.Unix(0, lastByte.Load())) > limit {
				cancel(errOriginSilent)
				return
			}
		}
	}()
	var last error // the last failure that came from the origin
	for {
		res, err := s.download(wctx, ev, onBytes, announce)
		if err == nil {
			return res, nil
		}
		if errors.Is(context.Cause(wctx), errOriginSilent) && ctx.Err() == nil {
			// An attempt cut short by the watchdog says only that; keep the
			// origin's own last answer unless this Fetch's error quotes one.
			var de *download.Error
			cut := errors.Is(err, errOriginSilent) || errors.Is(err, context.Canceled)
			if last == nil || !cut || (errors.As(err, &de) && de.Attempts > 1) {
				last = err
			}
			return res, stage.Permanent(&OriginGoneError{URL: ev.Asset.URL, For: limit, Last: last})
		}
		if wctx.Err() != nil || !download.IsRetryable(err) {
			return res, err
		}
		last = err
		// The client's own retries ran out but the origin's time has not:
		// try again (resuming) after a pause, still under the watchdog.
		s.Logger.Info("origin download gave up; trying again within the origin timeout", "url", ev.Asset.URL, "err", err)
		select {
		case <-wctx.Done():
		case <-time.After(min(limit/8, 5*time.Second)):
		}
	}
}

// Handle implements stage.Handler.
func (s *FetcherStage) Handle(ctx context.Context, m stage.Message) ([]stage.Event, error) {
	ev, err := decodeAsset(m)
	if err != nil {
		return nil, err
	}
	a := ev.Asset
	if !validRole(a.Role) || a.Digest.IsZero() || a.URL == "" {
		return nil, stage.Poison(fmt.Errorf("%w (role %q, digest %q, url %q)", errNoAsset, a.Role, a.Digest, a.URL))
	}
	log := s.Logger.With("request_id", ev.RequestID, "asset", a.Role)
	if s.Requests.Failed(ctx, messages.RequestKey(ev.Namespace, ev.RequestID)) {
		log.Info("request already failed; not fetching")
		return nil, nil
	}
	if err := s.Medium.Fetch(ctx, s, &ev, log); err != nil {
		return nil, err
	}
	out, err := assetEvent(messages.SubjectVerify, "verify", ev)
	return []stage.Event{out}, err
}

// download fetches the asset into the store's ingest area (resuming a
// partial file), reporting progress; onBytes is told the bytes so far, and
// announce, if set, of a disk a converter may convert while it arrives
// (ahead.go), once its first bytes are in.
func (s *FetcherStage) download(ctx context.Context, ev messages.AssetEvent, onBytes func(int64), announce func(messages.AssetEvent)) (download.Result, error) {
	a := ev.Asset
	dest := s.Store.IngestPath(a.Digest)
	if a.Size > 0 {
		have := int64(0)
		if fi, err := os.Stat(dest); err == nil {
			have = fi.Size()
		}
		if err := s.Store.CheckFree(filepath.Dir(dest), a.Size-have); err != nil {
			return download.Result{}, err // permanent only if the file system could never hold it
		}
	}
	// A copy this store had and found corrupt: the download repairs it, and
	// the person hears so (not a silent re-fetch), also when it fails.
	corrupt, wasCorrupt := s.Store.Quarantined(a.Digest)
	if wasCorrupt {
		s.Logger.Warn("the cached copy was corrupt; fetching it again", "request_id", ev.RequestID, "asset", a.Role, "reason", corrupt.Reason, "moved_to", corrupt.To)
		if s.Progress != nil {
			s.Progress(messages.Progress{Namespace: ev.Namespace, RequestID: ev.RequestID, Stage: messages.StageFetcher, Step: "fetch", Asset: a.Role, Total: a.Size,
				Note: corruptNote(corrupt) + "; fetching it again"})
		}
	}
	report := throttled(250*time.Millisecond, s.Progress)
	res, err := s.Downloader.Fetch(ctx, download.Request{
		URL: a.URL, Dest: dest, ExpectedSize: a.Size, Expected: a.Digest, Name: string(a.Role),
		Progress: func(p download.Progress) {
			// The first report comes with the first bytes in the file and
			// the size the origin declared, which manifests often do not give.
			if announce != nil && p.Total > 0 {
				ahead := ev
				ahead.Asset.Size = p.Total
				if wantsConvertAhead(ahead) {
					announce(ahead)
				}
				announce = nil
			}
			onBytes(p.Done)
			report(messages.Progress{Namespace: ev.Namespace, RequestID: ev.RequestID, Stage: messages.StageFetcher, Step: "fetch", Asset: a.Role, Done: p.Done, Total: p.Total, BytesPerSecond: p.BytesPerSecond})
		},
		OnRetry: func(r download.Retry) { s.reportRetry(ev.Namespace, ev.RequestID, a.Role, r) },
	})
	s.Metrics.OriginBytes(res.Transferred)
	if err != nil {
		if wasCorrupt {
			return download.Result{}, fmt.Errorf("%s, and fetching it again failed: %w", corruptNote(corrupt), err)
		}
		return download.Result{}, err
	}
	return res, nil
}

// corruptNote says what became of a cached copy found corrupt.
func corruptNote(q *content.QuarantinedError) string {
	if q.To == "" {
		return fmt.Sprintf("the cached copy was corrupt (%s; removed)", q.Reason)
	}
	return fmt.Sprintf("the cached copy was corrupt (%s; moved to %s)", q.Reason, q.To)
}

// VerifierStage checks the fetched bytes itself — it does not take the
// fetcher's word, except a fetcher in this very process, whose hash the
// store remembers (content.Store.RecordHashed) — and routes the asset on (Medium.Next): to a converter (a
// qcow2 disk wanted as raw, a compressed kernel), to the target host's
// converter, or straight to completion. Bytes found bad are removed and the
// asset is sent back to be fetched again (see Medium.Verify).
type VerifierStage struct {
	Store *store.Store
	// Medium is where the fetched bytes are.
	Medium   Medium
	Progress ProgressFunc
	Logger   *slog.Logger
	// Metrics, if set, counts the bytes read back from the object store.
	Metrics *metrics.Metrics
}

// Handle implements stage.Handler.
func (s *VerifierStage) Handle(ctx context.Context, m stage.Message) ([]stage.Event, error) {
	ev, err := decodeAsset(m)
	if err != nil {
		return nil, err
	}
	a := ev.Asset
	if !validRole(a.Role) || a.Digest.IsZero() {
		return nil, stage.Poison(errNoAsset)
	}
	log := s.Logger.With("request_id", ev.RequestID, "asset", a.Role)
	unpack, err := s.Medium.Verify(ctx, s, &ev, log)
	var again *refetchError
	if errors.As(err, &again) {
		return refetch(ev, again.err)
	}
	if err != nil {
		return nil, err
	}
	subject, step, err := s.Medium.Next(ctx, ev, needsConverting(ev, unpack))
	if err != nil {
		return nil, err
	}
	out, err := assetEvent(subject, step, ev)
	return []stage.Event{out}, err
}

func (s *VerifierStage) report(p messages.Progress) {
	if s.Progress != nil {
		s.Progress(p)
	}
}

// needsConverting reports whether a verified asset goes to a converter: a
// qcow2 disk wanted as raw, or a packed kernel.
func needsConverting(ev messages.AssetEvent, kernelNeedsUnpack bool) bool {
	a := ev.Asset
	wantsRaw := a.Role == image.RoleDisk && ev.Format == image.FormatRaw && a.Format != image.FormatRaw
	return kernelNeedsUnpack || wantsRaw
}

// refetch sends the asset back to the fetcher after its object was found
// bad (and deleted), at most maxRefetch times per request.
func refetch(ev messages.AssetEvent, why error) ([]stage.Event, error) {
	if ev.Refetch >= maxRefetch {
		return nil, stage.Permanent(fmt.Errorf("%s %s: the stored object was bad %d times: %w", ev.Asset.Role, ev.Asset.Digest, ev.Refetch+1, why))
	}
	ev.Refetch++
	ev.Status, ev.Object, ev.Path, ev.Host, ev.Blob = messages.StatusResolved, nil, "", "", digest.Digest{}
	out, err := assetEvent(messages.SubjectFetch, "fetch", ev)
	return []stage.Event{out}, err
}

// one, refusing anything outside the store's ingest directory.
func (s *VerifierStage) ingestPath(rel string) (string, error) {
	if filepath.IsAbs(rel) || !filepath.IsLocal(rel) {
		return "", fmt.Errorf("ingest path %q is not inside the store", rel)
	}
	p := filepath.Join(s.Store.Root(), rel)
	if filepath.Dir(p) != filepath.Join(s.Store.Root(), "ingest") {
		return "", fmt.Errorf("ingest path %q is not in the ingest directory", rel)
	}
	return p, nil
}

// ConverterStage makes files usable on its host: it finds the verified blob
// in its store (Medium.Local: with an object store, pulled into it first),
// converts a qcow2 disk to raw (and unpacks a compressed kernel) into the
// store's derived area, and places the result (Medium.Place: for a request
// targeted at its host, clones and the images view), its event naming the
// host and the local paths where they are valid only there.
type ConverterStage struct {
	Store *store.Store
	// Medium is where the verified bytes are.
	Medium Medium
	// Requests, if set, lets the converter skip disks of requests that already failed.
	Requests *Requests
	// Host is this converter's host name (its --target).
	Host string
	// CloneDir is where requests targeted at Host may have clones of their
	// disk made (see makeClones); "": this host makes none.
	CloneDir    string
	Progress    ProgressFunc
	Concurrency int
	Logger      *slog.Logger
	// Metrics, if set, counts the bytes pulled from the object store.
	Metrics *metrics.Metrics
	// ReportCorrupt, if set, tells the healer of an object that pulled wrong.
	ReportCorrupt func(context.Context, *place.BadObjectError) error
}

// Handle implements stage.Handler.
func (s *ConverterStage) Handle(ctx context.Context, m stage.Message) ([]stage.Event, error) {
	ev, err := decodeAsset(m)
	if err != nil {
		return nil, err
	}
	role := ev.Asset.Role
	if !validRole(role) || ev.Asset.Digest.IsZero() || (ev.Blob.IsZero() && ev.Object == nil) {
		return nil, stage.Poison(fmt.Errorf("converter got a %q asset without a verified blob or object", role))
	}
	log := s.Logger.With("request_id", ev.RequestID, "asset", role)
	if s.Requests.Failed(ctx, messages.RequestKey(ev.Namespace, ev.RequestID)) {
		log.Info("request already failed; not converting")
		return nil, nil
	}
	report := throttled(250*time.Millisecond, s.Progress)
	pulled := runningTotal(func(n int64) { s.Metrics.ObjectStoreBytes(metrics.FromObjectStore, n) })
	p := &place.Placer{Store: s.Store, Concurrency: s.Concurrency,
		Progress: func(step string, r image.Role, done, total int64) {
			if step == place.StepPull {
				pulled(done)
			}
			report(messages.Progress{Namespace: ev.Namespace, RequestID: ev.RequestID, Stage: messages.StageConverter, Step: step, Asset: r, Done: done, Total: total})
		}}
	blob, err := s.Medium.Local(ctx, s, p, ev, log)
	if err != nil {
		return nil, err
	}
	path, status, format := blob.Path, messages.StatusVerified, ev.Asset.Format
	switch {
	case role == image.RoleKernel:
		unpack, err := place.KernelNeedsUnpack(blob)
		if err != nil {
			return nil, err
		}
		if unpack && !ev.ClientConverts {
			if path, err = p.Kernel(ctx, blob); err != nil {
				return nil, fmt.Errorf("unpack kernel %s: %w", ev.Asset.Name, err)
			}
			status = messages.StatusConverted
			log.Info("unpacked kernel", "path", path)
		}
	case role == image.RoleDisk && ev.Format == image.FormatRaw && ev.Asset.Format != image.FormatRaw:
		if path, err = p.RawDisk(ctx, blob); err != nil {
			return nil, fmt.Errorf("convert disk %s: %w", ev.Asset.Name, err)
		}
		status, format = messages.StatusConverted, image.FormatRaw
		log.Info("converted", "path", path)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	ev.Status, ev.Blob, ev.Path, ev.Size = status, blob.SHA256, path, fi.Size()
	if role == image.RoleDisk {
		ev.FileFormat = format
	}
	if err := s.Medium.Place(ctx, s, &ev, place.ViewName(role, status == messages.StatusConverted, format), path, report); err != nil {
		return nil, err
	}
	_, done := s.Medium.Converter(s.Host, false)
	out, err := assetEvent(done, "done", ev)
	return []stage.Event{out}, err
}
