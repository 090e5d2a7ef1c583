package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/place"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// sharedCache is the medium of one cache that every process mounts: the
// fetcher downloads into its ingest area, the verifier commits the file to
// its blobs, and the converter and the collector find it there.
type sharedCache struct {
	// nc, if set, carries the conversion-ahead hints (ahead.go): the
	// fetcher announces a disk's download, converters follow it.
	nc *nats.Conn
}

var _ Medium = sharedCache{}

// Accept refuses what needs files on another host: every file is on host.
func (sharedCache) Accept(req messages.PrepareRequest, host string) error {
	if req.Target != "" && req.Target != host {
		return stage.Permanent(fmt.Errorf("target host %s: this deployment keeps every file in one cache directory on %s; "+
			"targets on other hosts need an object store (start the stages with --store nats:BUCKET)", req.Target, host))
	}
	if len(req.Clones) > 0 {
		return stage.Permanent(fmt.Errorf("clones are made by the target host's converter (converter --target HOST --clone-dir DIR); "+
			"this deployment keeps every file in one cache directory on %s and has none: use vmprep clone there", host))
	}
	return nil
}

// Fetch downloads the asset into the store's ingest area unless the store
// has it: one download per digest on this host, the others wait for it.
func (m sharedCache) Fetch(ctx context.Context, f *FetcherStage, ev *messages.AssetEvent, log *slog.Logger) error {
	a := ev.Asset
	if _, err := f.Store.Lookup(ctx, a.Digest); err == nil {
		log.Debug("already in store")
		ev.Status = messages.StatusFetched
		return nil
	} else if !errors.Is(err, content.ErrNotFound) {
		return err
	}

	// One downloader per digest on this host: others wait here, without a
	// worker slot, then find the blob (or the download's failure).
	var unlock func() error
	if err := stage.Idle(ctx, func() (err error) {
		unlock, err = f.Store.Lock(ctx, a.Digest.String())
		return err
	}); err != nil {
		return err
	}
	defer func() { _ = unlock() }()
	if _, err := f.Store.Lookup(ctx, a.Digest); err == nil {
		ev.Status = messages.StatusFetched
		return nil
	}
	if r, ok := f.failures.Load(leaseKey(a.Digest)); ok && time.Since(r.(recentFailure).at) < failureMemory {
		return stage.Permanent(fmt.Errorf("the download this request waited for failed: %w", r.(recentFailure).err))
	}
	// A converter following the download in this process waits for the
	// download engine's hash (RecordHashed below) instead of hashing too.
	hashing := f.Store.HashingHere(f.Store.IngestPath(a.Digest))
	var announce func(messages.AssetEvent)
	if m.nc != nil {
		announce = announceConvertAhead(m.nc, log)
	}
	res, err := f.fromOrigin(ctx, *ev, nil, announce)
	if err == nil && res.Stat != nil {
		// The download engine hashed every byte it wrote: a verifier in this
		// process commits the file by rename (one elsewhere hashes it).
		if rerr := f.Store.RecordHashed(res.Path, res.Stat, res.SHA256, a.Digest); rerr != nil {
			log.Debug("the verifier will hash the download again", "err", rerr)
		}
	}
	hashing()
	if errors.Is(err, ErrOriginGone) {
		f.failures.Store(leaseKey(a.Digest), recentFailure{err: err, at: time.Now()})
	}
	if err != nil {
		return err
	}
	rel, err := filepath.Rel(f.Store.Root(), res.Path)
	if err != nil {
		return err
	}
	log.Info("fetched", "bytes", res.Size, "transferred", res.Transferred, "resumed", res.Resumed)
	ev.Status, ev.Ingest, ev.Size = messages.StatusFetched, rel, res.Size
	return nil
}

// Verify commits the ingest file to the store (re-hashing it, unless a
// fetcher in this process hashed exactly this file), unless the store has
// the blob already.
func (sharedCache) Verify(ctx context.Context, v *VerifierStage, ev *messages.AssetEvent, log *slog.Logger) (bool, error) {
	a := ev.Asset
	unlock, err := v.Store.Lock(ctx, a.Digest.String())
	if err != nil {
		return false, err
	}
	defer func() { _ = unlock() }()

	blob, err := v.Store.Lookup(ctx, a.Digest)
	if errors.Is(err, content.ErrNotFound) {
		if ev.Ingest == "" {
			return false, stage.Permanent(fmt.Errorf("%s: not in the store and nothing was fetched", a.Role))
		}
		ingest, perr := v.ingestPath(ev.Ingest)
		if perr != nil {
			return false, stage.Poison(perr)
		}
		// Committing re-reads every byte: say so (the store reports no
		// progress within one file, so the step shows its start and end).
		v.report(messages.Progress{Namespace: ev.Namespace, RequestID: ev.RequestID, Stage: messages.StageVerifier, Step: messages.StepVerify, Asset: a.Role, Total: a.Size})
		blob, err = v.Store.Commit(ctx, ingest, a.Digest, a.Size)
		if err == nil {
			v.report(messages.Progress{Namespace: ev.Namespace, RequestID: ev.RequestID, Stage: messages.StageVerifier, Step: messages.StepVerify, Asset: a.Role, Done: blob.Size, Total: blob.Size})
		}
		if errors.Is(err, os.ErrNotExist) {
			// The fetched file is gone: the verifier cannot fetch it again.
			return false, stage.Permanent(fmt.Errorf("%s from %s: %w", a.Role, a.URL, err))
		}
		if err != nil {
			return false, fmt.Errorf("%s from %s: %w", a.Role, a.URL, err)
		}
		log.Info("verified and committed", "sha256", blob.SHA256.Hex)
	} else if err != nil {
		return false, err
	}
	ev.Status, ev.Blob, ev.Path, ev.Size, ev.Ingest = messages.StatusVerified, blob.SHA256, blob.Path, blob.Size, ""
	unpack := false
	if a.Role == image.RoleKernel {
		// A packed kernel (gzip: Ubuntu arm64; EFI zboot: Fedora arm64) must be
		// unpacked for direct boot; reading its magic is the only read on a warm request.
		if unpack, err = place.KernelNeedsUnpack(blob); err != nil {
			return false, err
		}
	}
	if a.Role == image.RoleDisk {
		if err := checkDeclaredFormat(blob.Path, a); err != nil {
			return false, err
		}
		ev.FileFormat = a.Format
	}
	return unpack, nil
}

// Next sends the asset to the shared converters if it needs converting,
// else to the collector: a target can only be this host (see Accept), and
// every converter's files are on it.
func (sharedCache) Next(_ context.Context, _ messages.AssetEvent, convert bool) (string, string, error) {
	if convert {
		return messages.SubjectConvert, "convert", nil
	}
	return messages.DoneSubject(messages.StageVerifier), "done", nil
}

// Local finds the committed blob in the shared store.
func (sharedCache) Local(ctx context.Context, c *ConverterStage, _ *place.Placer, ev messages.AssetEvent, _ *slog.Logger) (content.BlobInfo, error) {
	if ev.Blob.IsZero() {
		return content.BlobInfo{}, stage.Poison(fmt.Errorf("converter got a %q asset without a verified blob or object", ev.Asset.Role))
	}
	blob, err := c.Store.Lookup(ctx, ev.Blob)
	if errors.Is(err, content.ErrNotFound) {
		return blob, stage.Permanent(fmt.Errorf("%s blob %s is no longer in the store: %w", ev.Asset.Role, ev.Blob, err))
	}
	return blob, err
}

// Place makes no clones (Accept refuses them) and names no host: the
// collector finds every file in the shared store itself.
func (sharedCache) Place(_ context.Context, c *ConverterStage, ev *messages.AssetEvent, _, _ string, _ ProgressFunc) error {
	if ev.Asset.Role == image.RoleDisk && len(ev.Clones) > 0 {
		return stage.Permanent(fmt.Errorf("clones are made by the converter of the target host, and this is %s's", c.Host))
	}
	return nil
}

// Converter binds every converter to the shared work, reporting on the
// converters' shared subject: the collector finds their files itself.
// There is no targeted work (see Accept).
func (sharedCache) Converter(string, bool) ([]StageConsumer, string) {
	return []StageConsumer{{messages.StageConverter, []string{messages.SubjectConvert}}}, messages.DoneSubject(messages.StageConverter)
}

// Admit takes only what the collector finds in its own store: no object, no
// host, no per-host converter, and a disk in the format the request asked
// for (every request's disk is converted as it asks, see Next).
func (sharedCache) Admit(st *requestState, pub, host string, ev messages.AssetEvent) error {
	from, a := publisher(pub, host), ev.Asset
	if ev.Status == messages.StatusFailed {
		if pub == messages.StageConverter && host != "" {
			return refuse("failure from %s: this deployment has no per-host converters", from)
		}
		return nil
	}
	switch {
	case ev.Object != nil || ev.Host != "":
		return refuse("%s from %s names an object or a host; this deployment has one shared cache", a.Role, from)
	case host != "":
		return refuse("%s from %s: this deployment has one shared cache and no per-host converters", a.Role, from)
	case a.Role == image.RoleDisk && ev.FileFormat != st.Format:
		return refuse("disk format %q from %s: the request asked for %q", ev.FileFormat, from, st.Format)
	}
	return nil
}

// Collect finds the file in the shared store from the digest (not from the
// event: the store's files are immutable and verified) and links it into
// the images view, on the collector's host.
func (sharedCache) Collect(ctx context.Context, s *CollectorStage, img image.Spec, ev messages.AssetEvent) (collected, error) {
	path, err := s.storedPath(ctx, ev)
	if errors.Is(err, content.ErrNotFound) {
		// Removed since it was verified (GC): the collector cannot bring it back.
		err = stage.Permanent(err)
	}
	if err != nil {
		return collected{}, err
	}
	view, err := s.Store.LinkImage(ctx, img, viewName(ev), path)
	if err != nil {
		return collected{}, fmt.Errorf("link into the images view: %w", err)
	}
	return collected{Path: path, Host: s.Host, View: filepath.Dir(view), Linked: true}, nil
}

// Maintain: a shared cache has no jobs of its own (its GC is the store's).
// Maintain runs, beside a converter, the conversion of disks while they
// download (ahead.go), never in the converter's slots: only in a shared
// cache can a converter read the fetcher's ingest file.
func (m sharedCache) Maintain(name string, d Deps, log *slog.Logger) maintenance {
	if name != messages.StageConverter || m.nc == nil {
		return maintenance{}
	}
	ahead := &convertAhead{Store: d.Store, Concurrency: d.Concurrency, Slots: d.Concurrency, Logger: log.With("work", "ahead")}
	return maintenance{Loops: []func(context.Context){func(ctx context.Context) { ahead.Run(ctx, m.nc) }}}
}
