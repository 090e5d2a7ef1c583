package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/vmprep/vmprep/internal/objectstore"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// Defaults of the orphaned-chunk sweep (the verifier process runs it).
const (
	// DefaultSweepInterval is how often the sweep looks.
	DefaultSweepInterval = 10 * time.Minute
	// DefaultOrphanGrace is how old an unreferenced chunk set must be to be
	// deleted: far above the put stall timeout (30s), within which a put
	// in progress stores its next chunk or gives up and deletes its own.
	DefaultOrphanGrace = 15 * time.Minute
)

// HealerStage takes reports of corrupt objects (vmprep.asset.corrupt, from
// converters and clients, which may read objects but not delete them). A
// report is only a hint: the healer streams the object itself and deletes
// it — and its verified record, so that the next request fetches it again
// — only if its bytes do not hash to its own name. A false report changes
// nothing but the record's time.
type HealerStage struct {
	Objects  *objectstore.Store
	Verified *verifiedObjects
	Logger   *slog.Logger
}

// Handle implements stage.Handler.
func (s *HealerStage) Handle(ctx context.Context, m stage.Message) ([]stage.Event, error) {
	var r messages.CorruptReport
	if err := messages.Decode(m.Data, messages.TypeCorruptReport, &r); err != nil {
		return nil, stage.Poison(err)
	}
	if r.Object.Bucket != s.Objects.Bucket() {
		return nil, stage.Poison(fmt.Errorf("corrupt report names bucket %q, this process heals %q", r.Object.Bucket, s.Objects.Bucket()))
	}
	d, err := contentAddress(r.Object.Name)
	if err != nil {
		return nil, stage.Poison(fmt.Errorf("corrupt report: %w", err))
	}
	log := s.Logger.With("object", r.Object.Name, "version", r.Object.NUID)
	info, err := s.Objects.Stat(ctx, d)
	if errors.Is(err, objectstore.ErrNotFound) {
		log.Info("reported object is gone already")
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if r.Object.NUID != "" && info.NUID != r.Object.NUID {
		log.Info("reported object version was replaced already", "current", info.NUID)
		return nil, nil
	}
	// A stream of reports for one object (every request that reads it)
	// costs one re-read: a recheck that began after a report was stored
	// answers it.
	if rec, ok := s.Verified.record(ctx, d); ok && rec.NUID == info.NUID && rec.ReportSeq >= m.Sequence && m.Sequence > 0 {
		return nil, nil
	}
	_, err = s.Verified.Recheck(ctx, s.Objects, info, image.Asset{Digest: d}, m.Sequence)
	if errors.Is(err, errObjectMismatch) {
		log.Warn("reported object is corrupt; deleting it so the next request fetches it again", "reason", r.Reason, "err", err)
		if derr := s.Objects.Delete(ctx, d, info.NUID); derr != nil {
			return nil, derr
		}
		s.Verified.Forget(ctx, d)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	log.Warn("corruption report was false: the object matches its content address; keeping it", "reason", r.Reason)
	return nil, nil
}

// contentAddress is the digest an object name ("sha256/<hex>") stands for.
func contentAddress(name string) (digest.Digest, error) {
	alg, hex, ok := strings.Cut(name, "/")
	if !ok {
		return digest.Digest{}, fmt.Errorf("object name %q is not <algorithm>/<hex>", name)
	}
	d, err := digest.New(digest.Algorithm(alg), hex)
	if err != nil {
		return digest.Digest{}, fmt.Errorf("object name %q: %w", name, err)
	}
	if objectstore.Name(d) != name {
		return digest.Digest{}, fmt.Errorf("object name %q is not in canonical form", name)
	}
	return d, nil
}

// sweepLoop deletes orphaned chunks every interval until ctx ends.
func sweepLoop(ctx context.Context, objs *objectstore.Store, interval, grace time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		swept, err := objs.Sweep(ctx, grace)
		if err != nil && ctx.Err() == nil {
			log.Warn("orphaned-chunk sweep failed; trying again next time", "err", err)
		}
		if len(swept) > 0 {
			log.Info("orphaned-chunk sweep", "deleted", len(swept))
		}
	}
}
