package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/vmprep/vmprep/internal/follow"
	"github.com/vmprep/vmprep/internal/place"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// Converting a disk while it downloads (shared cache only: the converter
// reads the fetcher's ingest file). When a fetcher starts downloading a
// qcow2 disk wanted as raw it announces it on SubjectConvertAhead; a
// converter follows the ingest file, hashing it itself, converts as the
// bytes arrive and publishes the raw disk only once they hash to the signed
// digest (place.RawDiskAhead). The normal convert event, after the
// verifier, then finds the derived file (or waits on its lock for the
// conversion ahead to finish) and answers at once.
//
// Why a core NATS hint and not a second consumer of vmprep.asset.fetch:
// VMPREP_WORK is a work queue, where the server refuses two consumers
// whose filters overlap, and a message acked by one consumer is gone for
// the other. A hint that nobody hears costs nothing: the conversion then
// runs after the verifier, as before, and no message waits for a converter
// that does not take them (an older one, or none running).

// wantsConvertAhead reports whether the fetcher announces ev's download.
func wantsConvertAhead(ev messages.AssetEvent) bool {
	return ev.Asset.Role == image.RoleDisk && ev.Asset.Size > 0 && !ev.ClientConverts && ev.Target == "" &&
		needsConverting(ev, false)
}

// announceConvertAhead is the fetcher's FetcherStage.ConvertAhead.
func announceConvertAhead(nc *nats.Conn, log *slog.Logger) func(messages.AssetEvent) {
	return func(ev messages.AssetEvent) {
		data, err := messages.Encode(messages.TypeAsset, &ev)
		if err == nil {
			err = nc.Publish(messages.SubjectConvertAhead, data)
		}
		if err != nil {
			log.Debug("could not announce the download for converting ahead", "request_id", ev.RequestID, "err", err)
		}
	}
}

// aheadIdle is how long a conversion ahead waits for the ingest file to
// appear or grow before it gives up (the conversion after the verifier
// does the work then).
const aheadIdle = time.Minute

// convertAhead takes announcements and converts ahead, at most slots at a
// time; an announcement that finds every slot busy is dropped, so that a
// converter never queues work it will do anyway after the verifier.
type convertAhead struct {
	Store       *store.Store
	Concurrency int // qcow2 workers, as ConverterStage.Concurrency
	Slots       int
	Idle        time.Duration
	Logger      *slog.Logger

	// inflight: digests being converted ahead here. A retried download is
	// announced again; a second follower would hash the file for nothing.
	mu       sync.Mutex
	inflight map[string]bool
}

// Run subscribes and works until ctx ends; it waits for the conversions it
// started (cancelled with ctx: their temporary output is removed).
func (a *convertAhead) Run(ctx context.Context, nc *nats.Conn) {
	slots := make(chan struct{}, max(1, a.Slots))
	var wg sync.WaitGroup
	defer wg.Wait()
	sub, err := nc.QueueSubscribe(messages.SubjectConvertAhead, messages.QueueConvertAhead, func(m *nats.Msg) {
		select {
		case slots <- struct{}{}:
		default:
			a.Logger.Debug("every conversion-ahead slot is busy; this disk converts after its verification")
			return
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			defer func() { <-slots }()
			a.handle(ctx, m.Data)
		}()
	})
	if err != nil {
		a.Logger.Warn("not converting disks while they download", "err", err)
		return
	}
	<-ctx.Done()
	_ = sub.Unsubscribe()
}

// handle converts one announced disk ahead. Every outcome is only logged:
// the conversion after the verifier is the one the request waits for.
func (a *convertAhead) handle(ctx context.Context, data []byte) {
	var ev messages.AssetEvent
	if err := messages.Decode(data, messages.TypeAsset, &ev); err != nil || messages.ValidateRequestID(ev.RequestID) != nil ||
		ev.Asset.Digest.IsZero() || !wantsConvertAhead(ev) {
		a.Logger.Warn("ignoring a malformed conversion-ahead announcement", "err", err)
		return
	}
	log := a.Logger.With("request_id", ev.RequestID, "asset", ev.Asset.Role, "digest", ev.Asset.Digest.String())
	key := ev.Asset.Digest.String()
	a.mu.Lock()
	if a.inflight[key] {
		a.mu.Unlock()
		log.Debug("already converting this disk ahead")
		return
	}
	if a.inflight == nil {
		a.inflight = map[string]bool{}
	}
	a.inflight[key] = true
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.inflight, key)
		a.mu.Unlock()
	}()
	idle := a.Idle
	if idle <= 0 {
		idle = aheadIdle
	}
	p := &place.Placer{Store: a.Store, Concurrency: a.Concurrency}
	start := time.Now()
	path, err := p.RawDiskAhead(ctx, ev.Asset.Digest, ev.Asset.Size, follow.Options{Idle: idle})
	switch {
	case err == nil:
		log.Info("converted while downloading", "path", path, "seconds", time.Since(start).Seconds())
	case errors.Is(err, context.Canceled):
		log.Debug("conversion ahead cancelled", "err", err)
	default:
		log.Info("conversion ahead gave up; the disk converts after its verification", "err", err)
	}
}
