package pipeline

import (
	"bytes"
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
	"github.com/vmprep/vmprep/internal/lease"
	"github.com/vmprep/vmprep/internal/metrics"
	"github.com/vmprep/vmprep/internal/objectstore"
	"github.com/vmprep/vmprep/internal/place"
	"github.com/vmprep/vmprep/internal/qcow2"
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

// FetcherStage downloads an asset from its origin. On one host it leaves the
// bytes in the store's ingest area for the verifier; with an object store it
// puts them into the bucket, one download per digest fleet-wide (a lease per
// digest; others wait for the object). An asset already stored is not
// fetched again.
type FetcherStage struct {
	Store *store.Store
	// Requests, if set, lets the fetcher skip assets of requests that already failed.
	Requests   *Requests
	Downloader *download.Client
	// Objects and Leases are set in a deployment with an object store.
	Objects  *objectstore.Store
	Leases   *lease.Leases
	Progress ProgressFunc
	Logger   *slog.Logger
	// Metrics, if set, counts bytes from the origin and into the object
	// store, and lease waits.
	Metrics *metrics.Metrics
	// OriginTimeout bounds how long an origin may send no bytes before the
	// asset fails for good, however its attempts fail (default
	// DefaultOriginTimeout): see fromOrigin.
	OriginTimeout time.Duration
	// ConvertAhead, if set, is told of each download of a disk that a
	// converter may convert while it arrives (see ahead.go).
	ConvertAhead func(messages.AssetEvent)

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
// wait again. moved, if set, counts bytes for a lease.
func (s *FetcherStage) fromOrigin(ctx context.Context, ev messages.AssetEvent, moved *atomic.Int64) (download.Result, error) {
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
		res, err := s.download(wctx, ev, onBytes)
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
	if s.Objects != nil {
		return s.fetchToObjects(ctx, ev, log)
	}
	next := func() ([]stage.Event, error) {
		out, err := assetEvent(messages.SubjectVerify, "verify", ev)
		return []stage.Event{out}, err
	}
	if _, err := s.Store.Lookup(ctx, a.Digest); err == nil {
		log.Debug("already in store")
		ev.Status = messages.StatusFetched
		return next()
	} else if !errors.Is(err, content.ErrNotFound) {
		return nil, err
	}

	// One downloader per digest on this host: others wait here, without a
	// worker slot, then find the blob (or the download's failure).
	var unlock func() error
	if err := stage.Idle(ctx, func() (err error) {
		unlock, err = s.Store.Lock(ctx, a.Digest.String())
		return err
	}); err != nil {
		return nil, err
	}
	defer func() { _ = unlock() }()
	if _, err := s.Store.Lookup(ctx, a.Digest); err == nil {
		ev.Status = messages.StatusFetched
		return next()
	}
	if f, ok := s.failures.Load(leaseKey(a.Digest)); ok && time.Since(f.(recentFailure).at) < failureMemory {
		return nil, stage.Permanent(fmt.Errorf("the download this request waited for failed: %w", f.(recentFailure).err))
	}
	res, err := s.fromOrigin(ctx, ev, nil)
	if errors.Is(err, ErrOriginGone) {
		s.failures.Store(leaseKey(a.Digest), recentFailure{err: err, at: time.Now()})
	}
	if err != nil {
		return nil, err
	}
	rel, err := filepath.Rel(s.Store.Root(), res.Path)
	if err != nil {
		return nil, err
	}
	log.Info("fetched", "bytes", res.Size, "transferred", res.Transferred, "resumed", res.Resumed)
	ev.Status, ev.Ingest, ev.Size = messages.StatusFetched, rel, res.Size
	return next()
}

// download fetches the asset into the store's ingest area (resuming a
// partial file), reporting progress; onBytes is told the bytes so far.
func (s *FetcherStage) download(ctx context.Context, ev messages.AssetEvent, onBytes func(int64)) (download.Result, error) {
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
	announce := s.ConvertAhead
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

// fetchToObjects makes sure the asset is in the object store, downloading
// it from the origin only if nobody has and nobody else is.
func (s *FetcherStage) fetchToObjects(ctx context.Context, ev messages.AssetEvent, log *slog.Logger) ([]stage.Event, error) {
	a := ev.Asset
	key := leaseKey(a.Digest)
	waited := false
	var waitStart time.Time
	for {
		info, err := s.Objects.Stat(ctx, a.Digest)
		if err == nil {
			if waited {
				s.Metrics.LeaseWait(metrics.LeaseObjectAppeared, time.Since(waitStart))
				log.Info("another fetcher stored it", "object", info.Name)
			}
			return s.handOff(ev, info)
		}
		if !errors.Is(err, objectstore.ErrNotFound) {
			return nil, err
		}
		l, err := s.Leases.TryAcquire(ctx, key)
		var held *lease.HeldError
		if errors.As(err, &held) && held.Record.Failed != "" {
			// The download this request would wait for failed for good moments ago.
			return nil, stage.Permanent(fmt.Errorf("the download of %s failed on %s: %s", a.URL, held.Record.Holder, held.Record.Failed))
		}
		if errors.Is(err, lease.ErrHeld) {
			if !waited {
				log.Info("another fetcher is downloading it; waiting for the object", "lease", err)
				waitStart = time.Now()
			}
			waited = true
			ready := func() bool { _, err := s.Objects.Stat(ctx, a.Digest); return err == nil }
			// Waiting is not work: the slot goes to other messages meanwhile.
			var taken *lease.Lease
			err = stage.Idle(ctx, func() error {
				var werr error
				taken, werr = s.Leases.WaitOrTakeOver(ctx, key, 2*time.Second, ready)
				return werr
			})
			if errors.As(err, &held) && held.Record.Failed != "" {
				s.Metrics.LeaseWait(metrics.LeaseAbandoned, time.Since(waitStart))
				return nil, stage.Permanent(fmt.Errorf("the download of %s failed on %s: %s", a.URL, held.Record.Holder, held.Record.Failed))
			}
			if err != nil {
				s.Metrics.LeaseWait(metrics.LeaseAbandoned, time.Since(waitStart))
				return nil, err
			}
			if taken == nil {
				continue
			}
			// Its holder renewed it without progress for the stall bound
			// (stuck, or a forged lease): the download is ours now.
			log.Warn("took over a download lease that made no progress", "lease", key, "stall", s.Leases.Stall())
			l = taken
		}
		if err != nil {
			if waited {
				s.Metrics.LeaseWait(metrics.LeaseAbandoned, time.Since(waitStart))
			}
			return nil, err
		}
		if waited {
			s.Metrics.LeaseWait(metrics.LeaseTakenOver, time.Since(waitStart))
		} else {
			s.Metrics.LeaseWait(metrics.LeaseAcquired, 0)
		}
		info, err = s.downloadAndPut(ctx, ev, l, log)
		if errors.Is(err, ErrOriginGone) {
			// Those waiting for this download are answered with its failure.
			if ferr := l.Fail(context.WithoutCancel(ctx), err.Error()); ferr != nil {
				log.Warn("could not record the failure in the download lease; it will lapse", "err", ferr)
			}
		} else if rerr := l.Release(context.WithoutCancel(ctx)); rerr != nil {
			log.Warn("could not release the download lease; it will lapse", "err", rerr)
		}
		if err != nil {
			return nil, err
		}
		return s.handOff(ev, info)
	}
}

// errLeaseLost: another fetcher took over the download.
var errLeaseLost = errors.New("lost the download lease to another fetcher")

func (s *FetcherStage) downloadAndPut(ctx context.Context, ev messages.AssetEvent, l *lease.Lease, log *slog.Logger) (objectstore.Info, error) {
	a := ev.Asset
	// Someone may have finished between our look and taking the lease.
	if info, err := s.Objects.Stat(ctx, a.Digest); err == nil {
		return info, nil
	}
	var moved atomic.Int64
	wctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	// Kept while the origin has time to answer: a takeover would only
	// start the wait for it again.
	stop := l.Keep(wctx, moved.Load, s.originTimeout(), func(err error) { cancel(errLeaseLost) })
	defer stop()

	src, fromIngest := "", false
	if blob, err := s.Store.Lookup(ctx, a.Digest); err == nil {
		src = blob.Path // this host has it already: no origin download
	} else {
		res, err := s.fromOrigin(wctx, ev, &moved)
		if err != nil {
			if errors.Is(context.Cause(wctx), errLeaseLost) {
				return objectstore.Info{}, errLeaseLost
			}
			return objectstore.Info{}, err
		}
		log.Info("fetched", "bytes", res.Size, "transferred", res.Transferred, "resumed", res.Resumed)
		src, fromIngest = res.Path, true
	}
	report := throttled(250*time.Millisecond, s.Progress)
	// The lease records every byte moved, growing only: a put attempt that
	// starts over must not look like progress going backwards to waiters.
	var attempt int64
	info, err := s.Objects.PutFile(wctx, a.Digest, src, func(done int64) {
		if done < attempt {
			attempt = 0
		}
		moved.Add(done - attempt)
		attempt = done
		report(messages.Progress{Namespace: ev.Namespace, RequestID: ev.RequestID, Stage: messages.StageFetcher, Step: "store", Asset: a.Role, Done: done, Total: a.Size})
	})
	if err != nil {
		if errors.Is(context.Cause(wctx), errLeaseLost) {
			return objectstore.Info{}, errLeaseLost
		}
		if errors.Is(err, objectstore.ErrDigestMismatch) && fromIngest {
			s.Store.DiscardIngest(a.Digest)
		}
		return objectstore.Info{}, err
	}
	if fromIngest {
		s.Store.DiscardIngest(a.Digest)
	}
	s.Metrics.ObjectStoreBytes(metrics.ToObjectStore, info.Size)
	log.Info("stored in the object store", "object", info.Name, "bytes", info.Size)
	return info, nil
}

func (s *FetcherStage) handOff(ev messages.AssetEvent, info objectstore.Info) ([]stage.Event, error) {
	ev.Status, ev.Object, ev.Size, ev.Ingest = messages.StatusFetched, place.RefOf(info), info.Size, ""
	out, err := assetEvent(messages.SubjectVerify, "verify", ev)
	return []stage.Event{out}, err
}

// VerifierStage checks the fetched bytes itself — it does not take the
// fetcher's word — and routes the asset on: to a converter (a qcow2 disk
// wanted as raw, a compressed kernel), to the target host's converter, or
// straight to completion. On one host it commits the ingest file to the
// content store; with an object store it streams the object back and checks
// it against the signed digest, deleting a bad object and sending the asset
// back to be fetched again.
type VerifierStage struct {
	Store *store.Store
	// Objects and Verified are set in a deployment with an object store.
	Objects  *objectstore.Store
	Verified *verifiedObjects
	// TargetKnown reports whether a converter ever served target host (its
	// durable consumer exists): work for a host nobody serves would wait
	// forever, so such a request fails at once instead.
	TargetKnown func(ctx context.Context, host string) (bool, error)
	Progress    ProgressFunc
	Logger      *slog.Logger
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
	if s.Objects != nil {
		return s.verifyObject(ctx, ev)
	}
	unlock, err := s.Store.Lock(ctx, a.Digest.String())
	if err != nil {
		return nil, err
	}
	defer func() { _ = unlock() }()

	blob, err := s.Store.Lookup(ctx, a.Digest)
	if errors.Is(err, content.ErrNotFound) {
		if ev.Ingest == "" {
			return nil, stage.Permanent(fmt.Errorf("%s: not in the store and nothing was fetched", a.Role))
		}
		ingest, perr := s.ingestPath(ev.Ingest)
		if perr != nil {
			return nil, stage.Poison(perr)
		}
		// Committing re-reads every byte: say so (the store reports no
		// progress within one file, so the step shows its start and end).
		s.report(messages.Progress{Namespace: ev.Namespace, RequestID: ev.RequestID, Stage: messages.StageVerifier, Step: messages.StepVerify, Asset: a.Role, Total: a.Size})
		blob, err = s.Store.Commit(ctx, ingest, a.Digest, a.Size)
		if err == nil {
			s.report(messages.Progress{Namespace: ev.Namespace, RequestID: ev.RequestID, Stage: messages.StageVerifier, Step: messages.StepVerify, Asset: a.Role, Done: blob.Size, Total: blob.Size})
		}
		if errors.Is(err, os.ErrNotExist) {
			// The fetched file is gone: the verifier cannot fetch it again.
			return nil, stage.Permanent(fmt.Errorf("%s from %s: %w", a.Role, a.URL, err))
		}
		if err != nil {
			return nil, fmt.Errorf("%s from %s: %w", a.Role, a.URL, err)
		}
		s.Logger.Info("verified and committed", "request_id", ev.RequestID, "asset", a.Role, "sha256", blob.SHA256.Hex)
	} else if err != nil {
		return nil, err
	}
	ev.Status, ev.Blob, ev.Path, ev.Size, ev.Ingest = messages.StatusVerified, blob.SHA256, blob.Path, blob.Size, ""
	unpack := false
	if a.Role == image.RoleKernel {
		// A packed kernel (gzip: Ubuntu arm64; EFI zboot: Fedora arm64) must be
		// unpacked for direct boot; reading its magic is the only read on a warm request.
		if unpack, err = place.KernelNeedsUnpack(blob); err != nil {
			return nil, err
		}
	}
	if a.Role == image.RoleDisk {
		if err := checkDeclaredFormat(blob.Path, a); err != nil {
			return nil, err
		}
		ev.FileFormat = a.Format
	}
	return route(ev, unpack, false)
}

func (s *VerifierStage) report(p messages.Progress) {
	if s.Progress != nil {
		s.Progress(p)
	}
}

// route sends a verified asset on: to the target host's converter, to a
// shared converter when it needs converting, or to the collector.
func route(ev messages.AssetEvent, kernelNeedsUnpack, objects bool) ([]stage.Event, error) {
	subject, step := messages.DoneSubject(messages.StageVerifier), "done"
	switch {
	case objects && ev.Target != "":
		subject, step = messages.TargetSubject(ev.Target), "place"
	case objects && ev.ClientConverts:
	case needsConverting(ev, kernelNeedsUnpack):
		subject, step = messages.SubjectConvert, "convert"
	}
	out, err := assetEvent(subject, step, ev)
	return []stage.Event{out}, err
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

func (s *VerifierStage) verifyObject(ctx context.Context, ev messages.AssetEvent) ([]stage.Event, error) {
	a := ev.Asset
	log := s.Logger.With("request_id", ev.RequestID, "asset", a.Role)
	info, err := s.Objects.Stat(ctx, a.Digest)
	if errors.Is(err, objectstore.ErrNotFound) {
		log.Warn("object missing; fetching it again", "object", objectstore.Name(a.Digest))
		return refetch(ev, err)
	}
	if err != nil {
		return nil, err
	}
	report := throttled(250*time.Millisecond, s.Progress)
	read := runningTotal(func(n int64) { s.Metrics.ObjectStoreBytes(metrics.FromObjectStore, n) })
	rec, err := s.Verified.Check(ctx, s.Objects, info, a, func(done int64) {
		read(done)
		report(messages.Progress{Namespace: ev.Namespace, RequestID: ev.RequestID, Stage: messages.StageVerifier, Step: "verify", Asset: a.Role, Done: done, Total: info.Size})
	})
	if errors.Is(err, errObjectMismatch) {
		log.Warn("object does not match its signed digest; deleting it and fetching again", "object", info.Name, "version", info.NUID, "err", err)
		if derr := s.Objects.Delete(ctx, a.Digest, info.NUID); derr != nil {
			return nil, derr
		}
		s.Verified.Forget(ctx, a.Digest)
		return refetch(ev, err)
	}
	if err != nil {
		return nil, err
	}
	ev.Status, ev.Object, ev.Blob, ev.Size = messages.StatusVerified, place.RefOf(info), rec.SHA256, info.Size
	if a.Role == image.RoleDisk {
		ev.FileFormat = a.Format
		if f, _ := qcow2.DetectFormat(bytes.NewReader(rec.Head), int64(len(rec.Head))); a.Format == image.FormatQCOW2 && f != qcow2.FormatQcow2 {
			return nil, stage.Permanent(fmt.Errorf("disk %s is published as qcow2 but its verified bytes are not a qcow2 image", a.Name))
		}
	}
	if ev.Target != "" && s.TargetKnown != nil {
		known, err := s.TargetKnown(ctx, ev.Target)
		if err != nil {
			return nil, err
		}
		if !known {
			return nil, stage.Permanent(fmt.Errorf("no converter serves target host %s: start `converter --target %s --store nats:%s` there", ev.Target, ev.Target, s.Objects.Bucket()))
		}
	}
	return route(ev, a.Role == image.RoleKernel && place.KernelHeadNeedsUnpack(rec.Head), true)
}

// ingestPath turns the event's store-relative ingest path into an absolute
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

// ConverterStage makes files usable on its host. On one host it converts a
// verified qcow2 disk to raw (and unpacks a compressed kernel) into the
// store's derived area. With an object store it first pulls the verified
// object into its own store; for a request targeted at its host it places
// every file there (pull, convert, link the images view), and its event
// names the host and the local paths.
type ConverterStage struct {
	Store *store.Store
	// Requests, if set, lets the converter skip disks of requests that already failed.
	Requests *Requests
	// Objects is set in a deployment with an object store.
	Objects *objectstore.Store
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
	if !validRole(role) || ev.Asset.Digest.IsZero() || (s.Objects == nil && ev.Blob.IsZero()) || (s.Objects != nil && ev.Object == nil) {
		return nil, stage.Poison(fmt.Errorf("converter got a %q asset without a verified blob or object", role))
	}
	log := s.Logger.With("request_id", ev.RequestID, "asset", role)
	if s.Requests.Failed(ctx, messages.RequestKey(ev.Namespace, ev.RequestID)) {
		log.Info("request already failed; not converting")
		return nil, nil
	}
	report := throttled(250*time.Millisecond, s.Progress)
	pulled := runningTotal(func(n int64) { s.Metrics.ObjectStoreBytes(metrics.FromObjectStore, n) })
	p := &place.Placer{Store: s.Store, Objects: s.Objects, Concurrency: s.Concurrency,
		Progress: func(step string, r image.Role, done, total int64) {
			if step == place.StepPull {
				pulled(done)
			}
			report(messages.Progress{Namespace: ev.Namespace, RequestID: ev.RequestID, Stage: messages.StageConverter, Step: step, Asset: r, Done: done, Total: total})
		}}
	var blob content.BlobInfo
	if s.Objects == nil {
		blob, err = s.Store.Lookup(ctx, ev.Blob)
		if errors.Is(err, content.ErrNotFound) {
			return nil, stage.Permanent(fmt.Errorf("%s blob %s is no longer in the store: %w", role, ev.Blob, err))
		}
	} else {
		blob, err = p.Pull(ctx, role, ev.Asset.Digest, ev.Asset.Size, ev.Object)
		var bad *place.BadObjectError
		if errors.As(err, &bad) {
			// A converter may not delete objects: it reports the bad one to
			// the healer (which checks it itself and deletes it), and this
			// request ends rather than pulling the same bad bytes again.
			log.Warn("pulled object does not match its signed digest; reporting it", "object", bad.Ref.Name, "version", bad.Ref.NUID, "err", err)
			if s.ReportCorrupt != nil {
				if rerr := s.ReportCorrupt(ctx, bad); rerr != nil {
					log.Error("could not report the corrupt object", "err", rerr)
				}
			}
			return nil, stage.Permanent(fmt.Errorf("%w (reported for deletion: a new request fetches it again)", err))
		}
	}
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
	if role == image.RoleDisk && len(ev.Clones) > 0 {
		if s.Objects == nil || ev.Target != s.Host {
			return nil, stage.Permanent(fmt.Errorf("clones are made by the converter of the target host, and this is %s's", s.Host))
		}
		if ev.Cloned, err = s.makeClones(ctx, ev, path, report); err != nil {
			return nil, err
		}
	}
	if s.Objects != nil {
		ev.Host = s.Host
		if ev.Target != "" {
			// The host's own view: links replaced one by one as files arrive.
			name := place.ViewName(role, status == messages.StatusConverted, format)
			view, err := s.Store.LinkImage(ctx, ev.Image(), name, path)
			if err != nil {
				return nil, fmt.Errorf("link %s into the images view: %w", role, err)
			}
			if err := s.Store.SetViewSerial(ev.Image()); err != nil {
				return nil, fmt.Errorf("images view: %w", err)
			}
			ev.View = filepath.Dir(view)
		}
	}
	out, err := assetEvent(s.doneSubject(), "done", ev)
	return []stage.Event{out}, err
}

// doneSubject is where this converter reports: with an object store its
// files are on its host, which only its host's subject may say; in a shared
// cache the collector finds the files itself.
func (s *ConverterStage) doneSubject() string {
	if s.Objects != nil {
		return messages.DoneSubjectOf(s.Host)
	}
	return messages.DoneSubject(messages.StageConverter)
}
