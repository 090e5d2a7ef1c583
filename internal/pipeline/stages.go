package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/download"
	"github.com/vmprep/vmprep/pkg/kernel"
	"github.com/vmprep/vmprep/pkg/messages"
	"github.com/vmprep/vmprep/pkg/qcow2"
	"github.com/vmprep/vmprep/pkg/resolve"
	"github.com/vmprep/vmprep/pkg/stage"
	"github.com/vmprep/vmprep/pkg/store"
)

// ProgressFunc receives progress events (the stage processes publish them on
// core NATS; nothing depends on their delivery).
type ProgressFunc func(messages.Progress)

// isRetryable says whether a domain error is worth another delivery. Errors
// that do not say are treated as transient (I/O, NATS), which is bounded by
// MaxDeliver anyway.
func isRetryable(err error) bool {
	if err == nil {
		return false
	}
	if stage.IsPermanent(err) {
		return false
	}
	var r interface{ IsRetryable() bool }
	if errors.As(err, &r) {
		return r.IsRetryable()
	}
	var de *download.Error
	if errors.As(err, &de) {
		return de.Retryable
	}
	var re *resolve.Error
	if errors.As(err, &re) {
		return re.Retryable
	}
	if errors.Is(err, catalog.ErrInvalidSpec) || errors.Is(err, catalog.ErrUnknownDistro) || errors.Is(err, catalog.ErrUnsupportedDistro) {
		return false
	}
	return true
}

func classify(err error) error {
	if err == nil || isRetryable(err) {
		return err
	}
	return stage.Permanent(err)
}

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

// requestFailed reports whether the request has already ended in failure (say,
// its kernel was not found), so that its other assets need no more work. Any
// doubt (no KV, no state, an error) means "not failed".
func requestFailed(ctx context.Context, kv jetstream.KeyValue, id string) bool {
	if kv == nil {
		return false
	}
	st, err := loadState(ctx, kv, id)
	return err == nil && st.Final != nil && st.Final.Status == messages.ResultFailed
}

// FetcherStage downloads an asset into the store's ingest area, resuming a
// partial file left by an earlier (possibly crashed) worker. An asset already
// in the store is not fetched again.
type FetcherStage struct {
	Store *store.Store
	// KV, if set, lets the fetcher skip assets of requests that already failed.
	KV         jetstream.KeyValue
	Downloader *download.Client
	Progress   ProgressFunc
	Logger     *slog.Logger
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
	log := s.Logger.With("request", ev.RequestID, "asset", a.Role)
	if requestFailed(ctx, s.KV, ev.RequestID) {
		log.Info("request already failed; not fetching")
		return nil, nil
	}
	next := func() ([]stage.Event, error) {
		out, err := assetEvent(messages.SubjectVerify, "verify", ev)
		return []stage.Event{out}, err
	}
	if _, err := s.Store.Lookup(ctx, a.Digest); err == nil {
		log.Debug("already in store")
		ev.Status = messages.StatusFetched
		return next()
	} else if !errors.Is(err, store.ErrNotFound) {
		return nil, err
	}

	// One downloader per digest on this host: others wait here, then find the blob.
	unlock, err := s.Store.Lock(ctx, a.Digest.String())
	if err != nil {
		return nil, err
	}
	defer func() { _ = unlock() }()
	if _, err := s.Store.Lookup(ctx, a.Digest); err == nil {
		ev.Status = messages.StatusFetched
		return next()
	}
	dest := s.Store.IngestPath(a.Digest)
	if a.Size > 0 {
		have := int64(0)
		if fi, err := os.Stat(dest); err == nil {
			have = fi.Size()
		}
		if err := s.Store.CheckFree(filepath.Dir(dest), a.Size-have); err != nil {
			return nil, err // transient: space may be freed
		}
	}
	report := throttled(250*time.Millisecond, s.Progress)
	res, err := s.Downloader.Fetch(ctx, download.Request{
		URL: a.URL, Dest: dest, ExpectedSize: a.Size, Expected: a.Digest, Name: string(a.Role),
		Progress: func(p download.Progress) {
			report(messages.Progress{RequestID: ev.RequestID, Stage: messages.StageFetcher, Asset: a.Role, Done: p.Done, Total: p.Total, BytesPerSecond: p.BytesPerSecond})
		},
	})
	if err != nil {
		return nil, classify(err)
	}
	rel, err := filepath.Rel(s.Store.Root(), res.Path)
	if err != nil {
		return nil, err
	}
	log.Info("fetched", "bytes", res.Size, "transferred", res.Transferred, "resumed", res.Resumed)
	ev.Status, ev.Ingest, ev.Size = messages.StatusFetched, rel, res.Size
	return next()
}

// VerifierStage re-reads what the fetcher stored — it does not take the
// fetcher's word — and commits it to the content store, then routes the asset
// to the converter (a qcow2 disk wanted as raw) or straight to completion.
type VerifierStage struct {
	Store  *store.Store
	Logger *slog.Logger
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
	unlock, err := s.Store.Lock(ctx, a.Digest.String())
	if err != nil {
		return nil, err
	}
	defer func() { _ = unlock() }()

	blob, err := s.Store.Lookup(ctx, a.Digest)
	if errors.Is(err, store.ErrNotFound) {
		if ev.Ingest == "" {
			return nil, stage.Permanent(fmt.Errorf("%s: not in the store and nothing was fetched", a.Role))
		}
		ingest, perr := s.ingestPath(ev.Ingest)
		if perr != nil {
			return nil, stage.Poison(perr)
		}
		blob, err = s.Store.Commit(ctx, ingest, a.Digest, a.Size)
		if err != nil {
			if errors.Is(err, store.ErrDigestMismatch) || errors.Is(err, store.ErrSizeMismatch) || errors.Is(err, os.ErrNotExist) {
				return nil, stage.Permanent(fmt.Errorf("%s from %s: %w", a.Role, a.URL, err))
			}
			return nil, err
		}
		s.Logger.Info("verified and committed", "request", ev.RequestID, "asset", a.Role, "sha256", blob.SHA256.Hex)
	} else if err != nil {
		return nil, err
	}
	ev.Status, ev.Blob, ev.Path, ev.Size, ev.Ingest = messages.StatusVerified, blob.SHA256, blob.Path, blob.Size, ""
	if a.Role == catalog.RoleKernel {
		// A gzip-compressed kernel (Ubuntu arm64) must be unpacked for direct boot;
		// reading its two magic bytes is the only read on a warm request.
		gz, err := kernel.IsGzip(blob.Path)
		if err != nil {
			return nil, err
		}
		if gz {
			out, err := assetEvent(messages.SubjectConvert, "convert", ev)
			return []stage.Event{out}, err
		}
	}
	if a.Role == catalog.RoleDisk {
		ev.FileFormat = a.Format
		if ev.Format == catalog.FormatRaw && a.Format != catalog.FormatRaw {
			out, err := assetEvent(messages.SubjectConvert, "convert", ev)
			return []stage.Event{out}, err
		}
	}
	out, err := assetEvent(messages.SubjectDone, "done", ev)
	return []stage.Event{out}, err
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

// ConverterName identifies the conversion in derived-artifact keys; bump it
// when the converter's output could change.
const ConverterName = "vmprep-qcow2raw-1"

// ConverterStage converts a verified qcow2 disk to raw into the store's derived
// area (keyed by source digest, converter version and format). The verified
// source is never modified; a conversion already done is reused.
type ConverterStage struct {
	Store *store.Store
	// KV, if set, lets the converter skip disks of requests that already failed.
	KV          jetstream.KeyValue
	Progress    ProgressFunc
	Concurrency int
	Logger      *slog.Logger
}

// Handle implements stage.Handler.
func (s *ConverterStage) Handle(ctx context.Context, m stage.Message) ([]stage.Event, error) {
	ev, err := decodeAsset(m)
	if err != nil {
		return nil, err
	}
	if (ev.Asset.Role != catalog.RoleDisk && ev.Asset.Role != catalog.RoleKernel) || ev.Blob.IsZero() {
		return nil, stage.Poison(fmt.Errorf("converter got a %q asset without a verified blob", ev.Asset.Role))
	}
	if requestFailed(ctx, s.KV, ev.RequestID) {
		s.Logger.Info("request already failed; not converting", "request", ev.RequestID)
		return nil, nil
	}
	blob, err := s.Store.Lookup(ctx, ev.Blob)
	if err != nil {
		if errors.Is(err, store.ErrNotFound) {
			return nil, stage.Permanent(fmt.Errorf("%s blob %s is no longer in the store: %w", ev.Asset.Role, ev.Blob, err))
		}
		return nil, err
	}
	if ev.Asset.Role == catalog.RoleKernel {
		return s.unpackKernel(ctx, ev, blob)
	}
	key := store.DerivedKey{Source: blob.SHA256, Converter: ConverterName, Format: string(catalog.FormatRaw)}
	path, err := s.Store.Derived(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		if img, oerr := qcow2.OpenFile(blob.Path); oerr == nil {
			// The sparse output needs at most the virtual size (and a booted VM grows
			// it towards that anyway): refuse up front rather than fail half-way.
			if cerr := s.Store.CheckFree(filepath.Join(s.Store.Root(), "derived"), img.Info().VirtualSize); cerr != nil {
				_ = img.Close()
				return nil, cerr
			}
			_ = img.Close()
		}
		report := throttled(250*time.Millisecond, s.Progress)
		path, err = s.Store.PutDerived(ctx, key, func(ctx context.Context, dst string) error {
			_, err := qcow2.ConvertToRaw(ctx, blob.Path, dst,
				qcow2.WithConcurrency(s.Concurrency),
				qcow2.WithProgress(func(done, total int64) {
					report(messages.Progress{RequestID: ev.RequestID, Stage: messages.StageConverter, Asset: catalog.RoleDisk, Done: done, Total: total})
				}))
			return err
		})
	}
	if err != nil {
		var fe *qcow2.FeatureError
		var me *qcow2.MalformedError
		var fmtErr *qcow2.FormatError
		if errors.As(err, &fe) || errors.As(err, &me) || errors.As(err, &fmtErr) || errors.Is(err, qcow2.ErrNotQcow2) {
			return nil, stage.Permanent(fmt.Errorf("convert disk %s: %w", ev.Asset.Name, err))
		}
		return nil, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	s.Logger.Info("converted", "request", ev.RequestID, "path", path)
	ev.Status, ev.Path, ev.Size, ev.FileFormat = messages.StatusConverted, path, fi.Size(), catalog.FormatRaw
	out, err := assetEvent(messages.SubjectDone, "done", ev)
	return []stage.Event{out}, err
}

// KernelUnpackerName identifies kernel decompression in derived-artifact keys.
const KernelUnpackerName = "vmprep-gunzip-1"

// unpackKernel stores the uncompressed kernel as a derived artifact.
func (s *ConverterStage) unpackKernel(ctx context.Context, ev messages.AssetEvent, blob store.BlobInfo) ([]stage.Event, error) {
	key := store.DerivedKey{Source: blob.SHA256, Converter: KernelUnpackerName, Format: "vmlinux"}
	path, err := s.Store.Derived(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		path, err = s.Store.PutDerived(ctx, key, func(ctx context.Context, dst string) error {
			return kernel.Gunzip(ctx, blob.Path, dst, 0)
		})
		if err != nil && ctx.Err() == nil && !errors.Is(err, store.ErrInsufficientSpace) {
			return nil, stage.Permanent(fmt.Errorf("unpack kernel %s: %w", ev.Asset.Name, err))
		}
	}
	if err != nil {
		return nil, err
	}
	fi, err := os.Stat(path)
	if err != nil {
		return nil, err
	}
	s.Logger.Info("unpacked kernel", "request", ev.RequestID, "path", path)
	ev.Status, ev.Path, ev.Size = messages.StatusConverted, path, fi.Size()
	out, err := assetEvent(messages.SubjectDone, "done", ev)
	return []stage.Event{out}, err
}
