package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/resolve"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// resolve returns the resolution of spec, which is canonical (a codename is
// its version, so both spellings share stored records), and where it came
// from (messages.ResolvedFromNetwork or ResolvedFromCache).
//
// Stored records answer only under the trust roots they were resolved
// under (the resolver's keyring, catalog entry and mirror: see
// catalog.TrustRoots): under other roots the image is resolved again, and
// when the network is down the request fails saying why, never with a build
// that other keys vouched for or other URLs name.
//
//   - A pinned serial is one build whose directory never changes: its stored
//     record answers without the network, whatever its age.
//   - Otherwise a stored resolution younger than MaxAge answers. Else, for
//     catalogs with serials, the listing names the newest build: one already
//     verified is taken from its record (no manifests fetched); one older
//     than the newest ever verified is a rollback, never taken silently (the
//     newer build is kept if stored, else the request fails saying how to
//     pin); a new one is resolved from its own directory.
//   - When the network fails transiently, the newest stored build answers.
//
// A burst of requests for one image shares one resolution.
func (s *ResolverStage) resolve(ctx context.Context, spec image.Spec, log *slog.Logger) (catalog.Resolution, string, error) {
	type resolved struct {
		res  catalog.Resolution
		from string
	}
	v, err, shared := s.flight.Do(spec.String(), func() (any, error) {
		res, from, err := s.resolveOnce(ctx, spec, s.MaxAge, log)
		return resolved{res, from}, err
	})
	if err != nil {
		return catalog.Resolution{}, "", err
	}
	if shared {
		log.Debug("shared a concurrent resolution")
	}
	r := v.(resolved)
	return r.res, r.from, nil
}

// storedResolution is the resolution of spec the store answers without the
// network under roots, if any: a pinned build's record (its directory never
// changes), or the latest resolution while it is younger than maxAge.
func storedResolution(ctx context.Context, st *store.Store, spec image.Spec, roots catalog.TrustRoots, maxAge time.Duration) (catalog.Resolution, bool) {
	if spec.Serial != "" {
		rec, err := st.LoadSerialResolution(ctx, spec, roots)
		return rec, err == nil
	}
	cached, err := st.LoadResolution(ctx, spec, roots)
	return cached, err == nil && maxAge > 0 && time.Since(cached.ResolvedAt) < maxAge
}

// Newest resolves the newest build of spec (any spelling) from the
// network, as a request would with no stored resolution young enough: the
// fleet sync's look for new builds. Its signed manifest is verified and
// recorded, so requests pinned to its serial resolve without the network.
func (s *ResolverStage) Newest(ctx context.Context, spec image.Spec) (catalog.Resolution, error) {
	spec, err := spec.Normalize()
	if err != nil {
		return catalog.Resolution{}, err
	}
	spec.Serial = ""
	canonical, err := s.Resolver.Canonical(spec)
	if err != nil {
		return catalog.Resolution{}, &resolve.Error{Spec: spec, Op: resolve.OpPlan, Err: err}
	}
	v, err, _ := s.flight.Do("newest "+canonical.String(), func() (any, error) {
		res, _, err := s.resolveOnce(ctx, canonical, 0, s.Logger.With("spec", specString(canonical), "for", "fleet sync"))
		return res, err
	})
	if err != nil {
		return catalog.Resolution{}, err
	}
	return v.(catalog.Resolution), nil
}

func (s *ResolverStage) resolveOnce(ctx context.Context, spec image.Spec, maxAge time.Duration, log *slog.Logger) (catalog.Resolution, string, error) {
	roots, err := s.Resolver.Roots(spec)
	if err != nil {
		return catalog.Resolution{}, "", stage.Permanent(&resolve.Error{Spec: spec, Op: resolve.OpPlan, Err: err})
	}
	if rec, ok := storedResolution(ctx, s.Store, spec, roots, maxAge); ok {
		return rec, messages.ResolvedFromCache, nil
	}
	if spec.Serial != "" {
		res, err := s.Resolver.Resolve(ctx, spec)
		if err != nil {
			return catalog.Resolution{}, "", s.otherRoots(ctx, spec, roots, err, log)
		}
		s.record(ctx, res, false, log)
		return res, messages.ResolvedFromNetwork, nil
	}

	cached, cerr := s.Store.LoadResolution(ctx, spec, roots)
	serials, err := s.Resolver.Serials(ctx, spec)
	switch {
	case errors.Is(err, catalog.ErrNoSerials):
		// Each resolution takes the build published then.
		res, err := s.Resolver.Resolve(ctx, spec)
		if err != nil {
			return s.offline(ctx, spec, roots, err, log)
		}
		s.record(ctx, res, true, log)
		return res, messages.ResolvedFromNetwork, nil
	case err != nil:
		return s.offline(ctx, spec, roots, err, log)
	}

	newest := spec
	newest.Serial = serials[0].Serial
	mark, merr := s.Store.NewestSerial(ctx, spec, roots)
	if merr != nil && !errors.Is(merr, content.ErrNotFound) {
		log.Warn("unreadable newest-serial mark; the rollback check is skipped until the next verified build", "err", merr)
	}
	if merr == nil && image.CompareNatural(newest.Serial, mark.Serial) < 0 {
		verified := spec
		verified.Serial = mark.Serial
		rec, err := s.Store.LoadSerialResolution(ctx, verified, roots)
		if err != nil && cerr == nil && cached.Spec.Serial == mark.Serial {
			rec, err = cached, nil
		}
		if err == nil {
			log.Warn("the mirror offers only builds older than one verified before (stale or rolled back): keeping the newer build",
				"offered", newest.Serial, "kept", mark.Serial)
			return rec, messages.ResolvedFromCache, nil
		}
		return catalog.Resolution{}, "", stage.Permanent(&resolve.RolledBackError{
			Spec: spec, Offered: newest.Serial, Verified: mark.Serial, VerifiedAt: mark.VerifiedAt})
	}
	if rec, err := s.Store.LoadSerialResolution(ctx, newest, roots); err == nil {
		// Verified before, from a directory that never changes.
		if cerr != nil || cached.Spec.Serial != newest.Serial {
			s.record(ctx, rec, true, log)
		}
		return rec, messages.ResolvedFromCache, nil
	}
	res, err := s.Resolver.Resolve(ctx, newest)
	if err != nil {
		return s.offline(ctx, spec, roots, err, log)
	}
	s.record(ctx, res, true, log)
	return res, messages.ResolvedFromNetwork, nil
}

// offline answers a failed network resolution: when the failure is
// transient, with the newest build stored for spec under roots (by the
// newest-serial mark, else the latest resolution); otherwise with the error.
func (s *ResolverStage) offline(ctx context.Context, spec image.Spec, roots catalog.TrustRoots, err error, log *slog.Logger) (catalog.Resolution, string, error) {
	if Classify(err) != Retry {
		return catalog.Resolution{}, "", stage.Permanent(err)
	}
	if mark, merr := s.Store.NewestSerial(ctx, spec, roots); merr == nil {
		verified := spec
		verified.Serial = mark.Serial
		if rec, rerr := s.Store.LoadSerialResolution(ctx, verified, roots); rerr == nil {
			log.Warn("resolution failed; using the newest stored build", "err", err, "serial", mark.Serial)
			return rec, messages.ResolvedFromCache, nil
		}
	}
	if cached, cerr := s.Store.LoadResolution(ctx, spec, roots); cerr == nil {
		log.Warn("resolution failed; using the stored resolution", "err", err, "resolved_at", cached.ResolvedAt)
		return cached, messages.ResolvedFromCache, nil
	}
	return catalog.Resolution{}, "", s.otherRoots(ctx, spec, roots, err, log)
}

// otherRoots explains a resolution that failed for want of the network
// when the store holds spec only under other trust roots: the cached build
// exists but may not answer, and the requester must learn why rather than
// see a bare network error. Other errors are returned as they are.
func (s *ResolverStage) otherRoots(ctx context.Context, spec image.Spec, roots catalog.TrustRoots, err error, log *slog.Logger) error {
	if Classify(err) != Retry {
		return err
	}
	var lerr error
	if spec.Serial != "" {
		_, lerr = s.Store.LoadSerialResolution(ctx, spec, roots)
	} else {
		_, lerr = s.Store.LoadResolution(ctx, spec, roots)
	}
	var oe *store.OtherRootsError
	if !errors.As(lerr, &oe) {
		return err
	}
	log.Warn("resolution failed, and the stored build was resolved under other trust roots: not using it", "err", err, "stored_roots", catalog.Differences(oe.Recorded, roots))
	return fmt.Errorf("%w; cannot re-resolve offline: %w", oe, err)
}

// record stores a verified resolution: per build and in the newest-serial
// mark when it has a serial, and as the latest resolution when latest is
// set (a pinned build does not replace what unpinned requests get). Failures
// are logged: the request is answered anyway, only warm starts suffer.
func (s *ResolverStage) record(ctx context.Context, res catalog.Resolution, latest bool, log *slog.Logger) {
	if res.Spec.Serial != "" {
		if err := s.Store.SaveSerialResolution(ctx, res); err != nil {
			log.Warn("could not record the build's resolution", "err", err)
		}
		if res.Roots == nil {
			log.Warn("could not record the newest serial: the resolution names no trust roots")
		} else if _, err := s.Store.RaiseNewestSerial(ctx, res.Spec, *res.Roots, res.Spec.Serial, res.ResolvedAt); err != nil {
			log.Warn("could not record the newest serial", "err", err)
		}
	}
	if latest {
		if err := s.Store.SaveResolution(ctx, res); err != nil {
			log.Warn("could not record resolution", "err", err)
		}
	}
}
