package pipeline

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/lease"
	"github.com/vmprep/vmprep/internal/metrics"
	"github.com/vmprep/vmprep/internal/objectstore"
	"github.com/vmprep/vmprep/internal/place"
	"github.com/vmprep/vmprep/internal/qcow2"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// objectStore is the medium of a multi-host deployment: verified bytes live
// in a JetStream Object Store bucket, and each host keeps its own store as
// a read-through cache. Converters pull into their host's store, and a
// request targeted at a host is placed there by that host's converter.
type objectStore struct {
	objects *objectstore.Store
	// leases make one origin download per digest across hosts (nil in a
	// process without a fetcher).
	leases *lease.Leases
	// verified remembers verified object versions (the verifier's and the
	// healer's).
	verified *verifiedObjects
	// targetKnown reports whether a converter ever served host (its
	// durable consumer exists): work for a host nobody serves would wait
	// forever, so such a request fails at once instead. Nil: not asked.
	targetKnown func(ctx context.Context, host string) (bool, error)
}

var _ Medium = (*objectStore)(nil)

// Accept takes every request: any host's converter can be targeted.
func (*objectStore) Accept(messages.PrepareRequest, string) error { return nil }

// Fetch makes sure the asset is in the object store, downloading it from
// the origin only if nobody has and nobody else is: one download per
// digest fleet-wide (a lease per digest; others wait for the object).
func (o *objectStore) Fetch(ctx context.Context, s *FetcherStage, ev *messages.AssetEvent, log *slog.Logger) error {
	a := ev.Asset
	key := leaseKey(a.Digest)
	waited := false
	var waitStart time.Time
	for {
		info, err := o.objects.Stat(ctx, a.Digest)
		if err == nil {
			if waited {
				s.Metrics.LeaseWait(metrics.LeaseObjectAppeared, time.Since(waitStart))
				log.Info("another fetcher stored it", "object", info.Name)
			}
			handOff(ev, info)
			return nil
		}
		if !errors.Is(err, objectstore.ErrNotFound) {
			return err
		}
		l, err := o.leases.TryAcquire(ctx, key)
		var held *lease.HeldError
		if errors.As(err, &held) && held.Record.Failed != "" {
			// The download this request would wait for failed for good moments ago.
			return stage.Permanent(fmt.Errorf("the download of %s failed on %s: %s", a.URL, held.Record.Holder, held.Record.Failed))
		}
		if errors.Is(err, lease.ErrHeld) {
			if !waited {
				log.Info("another fetcher is downloading it; waiting for the object", "lease", err)
				waitStart = time.Now()
			}
			waited = true
			ready := func() bool { _, err := o.objects.Stat(ctx, a.Digest); return err == nil }
			// Waiting is not work: the slot goes to other messages meanwhile.
			var taken *lease.Lease
			err = stage.Idle(ctx, func() error {
				var werr error
				taken, werr = o.leases.WaitOrTakeOver(ctx, key, 2*time.Second, ready)
				return werr
			})
			if errors.As(err, &held) && held.Record.Failed != "" {
				s.Metrics.LeaseWait(metrics.LeaseAbandoned, time.Since(waitStart))
				return stage.Permanent(fmt.Errorf("the download of %s failed on %s: %s", a.URL, held.Record.Holder, held.Record.Failed))
			}
			if err != nil {
				s.Metrics.LeaseWait(metrics.LeaseAbandoned, time.Since(waitStart))
				return err
			}
			if taken == nil {
				continue
			}
			// Its holder renewed it without progress for the stall bound
			// (stuck, or a forged lease): the download is ours now.
			log.Warn("took over a download lease that made no progress", "lease", key, "stall", o.leases.Stall())
			l = taken
		}
		if err != nil {
			if waited {
				s.Metrics.LeaseWait(metrics.LeaseAbandoned, time.Since(waitStart))
			}
			return err
		}
		if waited {
			s.Metrics.LeaseWait(metrics.LeaseTakenOver, time.Since(waitStart))
		} else {
			s.Metrics.LeaseWait(metrics.LeaseAcquired, 0)
		}
		info, err = o.downloadAndPut(ctx, s, *ev, l, log)
		if errors.Is(err, ErrOriginGone) {
			// Those waiting for this download are answered with its failure.
			if ferr := l.Fail(context.WithoutCancel(ctx), err.Error()); ferr != nil {
				log.Warn("could not record the failure in the download lease; it will lapse", "err", ferr)
			}
		} else if rerr := l.Release(context.WithoutCancel(ctx)); rerr != nil {
			log.Warn("could not release the download lease; it will lapse", "err", rerr)
		}
		if err != nil {
			return err
		}
		handOff(ev, info)
		return nil
	}
}

// errLeaseLost: another fetcher took over the download.
var errLeaseLost = errors.New("lost the download lease to another fetcher")

// downloadAndPut puts the asset into the object store under lease l: from
// this host's store if it has the blob, else from the origin.
func (o *objectStore) downloadAndPut(ctx context.Context, s *FetcherStage, ev messages.AssetEvent, l *lease.Lease, log *slog.Logger) (objectstore.Info, error) {
	a := ev.Asset
	// Someone may have finished between our look and taking the lease.
	if info, err := o.objects.Stat(ctx, a.Digest); err == nil {
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
		res, err := s.fromOrigin(wctx, ev, &moved, nil)
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
	info, err := o.objects.PutFile(wctx, a.Digest, src, func(done int64) {
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

// handOff says where the verifier finds the object.
func handOff(ev *messages.AssetEvent, info objectstore.Info) {
	ev.Status, ev.Object, ev.Size, ev.Ingest = messages.StatusFetched, place.RefOf(info), info.Size, ""
}

// Verify streams the object back and checks it against the signed digest
// (once per object version: verifiedObjects records it), deleting a bad
// object so that the asset is fetched again.
func (o *objectStore) Verify(ctx context.Context, s *VerifierStage, ev *messages.AssetEvent, log *slog.Logger) (bool, error) {
	a := ev.Asset
	info, err := o.objects.Stat(ctx, a.Digest)
	if errors.Is(err, objectstore.ErrNotFound) {
		log.Warn("object missing; fetching it again", "object", objectstore.Name(a.Digest))
		return false, &refetchError{err}
	}
	if err != nil {
		return false, err
	}
	report := throttled(250*time.Millisecond, s.Progress)
	read := runningTotal(func(n int64) { s.Metrics.ObjectStoreBytes(metrics.FromObjectStore, n) })
	rec, err := o.verified.Check(ctx, o.objects, info, a, func(done int64) {
		read(done)
		report(messages.Progress{Namespace: ev.Namespace, RequestID: ev.RequestID, Stage: messages.StageVerifier, Step: "verify", Asset: a.Role, Done: done, Total: info.Size})
	})
	if errors.Is(err, errObjectMismatch) {
		log.Warn("object does not match its signed digest; deleting it and fetching again", "object", info.Name, "version", info.NUID, "err", err)
		if derr := o.objects.Delete(ctx, a.Digest, info.NUID); derr != nil {
			return false, derr
		}
		o.verified.Forget(ctx, a.Digest)
		return false, &refetchError{err}
	}
	if err != nil {
		return false, err
	}
	ev.Status, ev.Object, ev.Blob, ev.Size = messages.StatusVerified, place.RefOf(info), rec.SHA256, info.Size
	if a.Role == image.RoleDisk {
		ev.FileFormat = a.Format
		if f, _ := qcow2.DetectFormat(bytes.NewReader(rec.Head), int64(len(rec.Head))); a.Format == image.FormatQCOW2 && f != qcow2.FormatQcow2 {
			return false, stage.Permanent(fmt.Errorf("disk %s is published as qcow2 but its verified bytes are not a qcow2 image", a.Name))
		}
	}
	return a.Role == image.RoleKernel && place.KernelHeadNeedsUnpack(rec.Head), nil
}

// Next sends the asset to its target host's converter, which places every
// file there; a requester that converts itself gets the object as it is;
// else to a converter when it needs converting, or to the collector.
func (o *objectStore) Next(ctx context.Context, ev messages.AssetEvent, convert bool) (string, string, error) {
	if ev.Target != "" && o.targetKnown != nil {
		known, err := o.targetKnown(ctx, ev.Target)
		if err != nil {
			return "", "", err
		}
		if !known {
			return "", "", stage.Permanent(fmt.Errorf("no converter serves target host %s: start `converter --target %s --store nats:%s` there", ev.Target, ev.Target, o.objects.Bucket()))
		}
	}
	switch {
	case ev.Target != "":
		return messages.TargetSubject(ev.Target), "place", nil
	case ev.ClientConverts:
	case convert:
		return messages.SubjectConvert, "convert", nil
	}
	return messages.DoneSubject(messages.StageVerifier), "done", nil
}

// Local pulls the verified object into this host's store (a no-op when it
// is there). An object that pulls wrong is reported to the healer, and the
// request ends rather than pulling the same bad bytes again.
func (o *objectStore) Local(ctx context.Context, c *ConverterStage, p *place.Placer, ev messages.AssetEvent, log *slog.Logger) (content.BlobInfo, error) {
	if ev.Object == nil {
		return content.BlobInfo{}, stage.Poison(fmt.Errorf("converter got a %q asset without a verified blob or object", ev.Asset.Role))
	}
	puller := *p
	puller.Objects = o.objects
	blob, err := puller.Pull(ctx, ev.Asset.Role, ev.Asset.Digest, ev.Asset.Size, ev.Object)
	var bad *place.BadObjectError
	if errors.As(err, &bad) {
		// A converter may not delete objects: it reports the bad one to
		// the healer (which checks it itself and deletes it).
		log.Warn("pulled object does not match its signed digest; reporting it", "object", bad.Ref.Name, "version", bad.Ref.NUID, "err", err)
		if c.ReportCorrupt != nil {
			if rerr := c.ReportCorrupt(ctx, bad); rerr != nil {
				log.Error("could not report the corrupt object", "err", rerr)
			}
		}
		return blob, stage.Permanent(fmt.Errorf("%w (reported for deletion: a new request fetches it again)", err))
	}
	return blob, err
}

// Place makes the clones a request targeted at this host asks for, names
// the host (its files are valid there only) and, for a targeted request,
// links the file into the host's own images view.
func (o *objectStore) Place(ctx context.Context, c *ConverterStage, ev *messages.AssetEvent, view, path string, report ProgressFunc) error {
	role := ev.Asset.Role
	if role == image.RoleDisk && len(ev.Clones) > 0 {
		if ev.Target != c.Host {
			return stage.Permanent(fmt.Errorf("clones are made by the converter of the target host, and this is %s's", c.Host))
		}
		var err error
		if ev.Cloned, err = c.makeClones(ctx, *ev, path, report); err != nil {
			return err
		}
	}
	ev.Host = c.Host
	if ev.Target != "" {
		// The host's own view: links replaced one by one as files arrive.
		link, err := c.Store.LinkImage(ctx, ev.Image(), view, path)
		if err != nil {
			return fmt.Errorf("link %s into the images view: %w", role, err)
		}
		if err := c.Store.SetViewSerial(ev.Image()); err != nil {
			return fmt.Errorf("images view: %w", err)
		}
		ev.View = filepath.Dir(link)
	}
	return nil
}

// Converter binds host's converter to the work targeted at host and,
// unless targetedOnly, to the untargeted work any converter may do. It
// reports on its host's own subject: its files are on its host, which only
// its host's subject may say.
func (*objectStore) Converter(host string, targetedOnly bool) ([]StageConsumer, string) {
	var consumers []StageConsumer
	if !targetedOnly {
		consumers = append(consumers, StageConsumer{messages.StageConverter, []string{messages.SubjectConvert}})
	}
	consumers = append(consumers, StageConsumer{messages.TargetConsumer(host), []string{messages.TargetSubject(host)}})
	return consumers, messages.DoneSubjectOf(host)
}

// Admit takes a finished asset only as an object named by its digest in
// this bucket, and a file on a host only from that host's converter, on the
// route Next gives the request: a targeted request only from its target
// host's converter, one whose requester converts only from the verifier
// (unless targeted), its disk then as published. A converter's failure
// must come from a converter that could have had the request.
func (o *objectStore) Admit(st *requestState, pub, host string, ev messages.AssetEvent) error {
	from, a := publisher(pub, host), ev.Asset
	if ev.Status == messages.StatusFailed {
		if pub != messages.StageConverter {
			return nil
		}
		switch {
		case host == "":
			return refuse("failure from %s: with an object store converters report from their host's subject", from)
		case st.Target != "" && host != st.Target:
			return refuse("failure from %s: the request is targeted at %s", from, st.Target)
		case st.Target == "" && st.ClientConverts:
			return refuse("failure from %s: the requester converts itself; no converter had the request", from)
		}
		return nil
	}
	bucket := o.objects.Bucket()
	if obj := ev.Object; obj == nil || obj.Bucket != bucket || obj.Name != objectstore.Name(a.Digest) || (a.Size > 0 && obj.Size != a.Size) {
		return refuse("%s from %s: its object %+v is not %s in bucket %s", a.Role, from, ev.Object, objectstore.Name(a.Digest), bucket)
	}
	switch {
	case ev.Host != "" && ev.Host != host:
		return refuse("%s on host %q from %s: only that host's converter says what is on it", a.Role, ev.Host, from)
	case host != "" && (ev.Host != host || ev.Path == ""):
		return refuse("%s from %s names no file on its host", a.Role, from)
	case pub == messages.StageConverter && host == "":
		return refuse("%s from %s: with an object store converters report from their host's subject", a.Role, from)
	case st.Target != "" && host != st.Target:
		return refuse("%s from %s: the request is targeted at %s, whose converter places it", a.Role, from, st.Target)
	case st.Target == "" && st.ClientConverts && pub != messages.StageVerifier:
		return refuse("%s from %s: the requester converts itself; only the verifier finishes its assets", a.Role, from)
	case a.Role == image.RoleDisk && !st.ClientConverts && ev.FileFormat != st.Format:
		// A requester that converts itself takes the disk as published.
		return refuse("disk format %q from %s: the request asked for %q", ev.FileFormat, from, st.Format)
	}
	return nil
}

// Collect names the file where its host's converter placed it (Admit has
// checked that host said so), and that host's images view; an asset no
// converter placed is the object alone (the result's File.Object).
func (*objectStore) Collect(_ context.Context, _ *CollectorStage, _ image.Spec, ev messages.AssetEvent) (collected, error) {
	if ev.Host == "" || ev.Path == "" {
		return collected{}, nil
	}
	return collected{Path: ev.Path, Host: ev.Host, View: ev.View}, nil
}

// Maintain gives the verifier's processes (the verifier may delete
// objects) the healer of reported objects, on its own consumer, and the
// sweep of chunks that interrupted puts left.
func (o *objectStore) Maintain(name string, d Deps, log *slog.Logger) maintenance {
	if name != messages.StageVerifier {
		return maintenance{}
	}
	heal := &HealerStage{Objects: o.objects, Verified: o.verified, Logger: log.With("consumer", messages.ConsumerHealer)}
	interval, grace := d.SweepInterval, d.OrphanGrace
	if interval <= 0 {
		interval = DefaultSweepInterval
	}
	if grace <= 0 {
		grace = DefaultOrphanGrace
	}
	return maintenance{
		Handlers: []maintenanceHandler{{Consumer: messages.ConsumerHealer, Filter: messages.SubjectCorrupt, Handler: heal.Handle}},
		Loops:    []func(context.Context){func(ctx context.Context) { sweepLoop(ctx, o.objects, interval, grace, log) }},
	}
}
