package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/messages"
	"github.com/vmprep/vmprep/pkg/stage"
	"github.com/vmprep/vmprep/pkg/store"
)

// Resolver resolves an image spec to its verified assets (pkg/resolve).
type Resolver interface {
	Resolve(ctx context.Context, spec catalog.ImageSpec) (catalog.Resolution, error)
}

// ResolverStage handles prepare requests: it validates the request, resolves
// the spec (from the stored resolution when it is fresh, else from the
// network, falling back to the stored one when the network fails), records the
// request for the collector, and emits one fetch event per asset.
type ResolverStage struct {
	Resolver Resolver
	Store    *store.Store
	KV       jetstream.KeyValue
	// MaxAge is how long a stored resolution is used without asking the network
	// again (0: always ask, falling back to the stored one when offline).
	MaxAge time.Duration
	Logger *slog.Logger
}

// Handle implements stage.Handler.
func (s *ResolverStage) Handle(ctx context.Context, m stage.Message) ([]stage.Event, error) {
	var req messages.PrepareRequest
	if err := messages.Decode(m.Data, messages.TypePrepareRequest, &req); err != nil {
		return nil, stage.Poison(err)
	}
	if err := messages.ValidateRequestID(req.RequestID); err != nil {
		return nil, stage.Poison(err)
	}
	if err := req.Validate(); err != nil {
		return nil, stage.Permanent(err)
	}
	spec, err := req.Spec.Normalize()
	if err != nil {
		return nil, stage.Permanent(err)
	}
	req.Spec = spec
	log := s.Logger.With("request", req.RequestID, "spec", specString(spec))

	state, err := loadState(ctx, s.KV, req.RequestID)
	switch {
	case err == nil && (state.Spec != spec || state.Format != req.Format):
		return nil, stage.Poison(&requestIDReusedError{ID: req.RequestID, Spec: state.Spec, Format: state.Format})
	case err == nil && state.Final != nil:
		log.Info("duplicate request: already answered")
		return nil, nil
	case err == nil && m.Delivery == 1:
		// Another message with this id created the state: a duplicate publish
		// of a request still in flight.
		log.Info("duplicate request: already in progress")
		return nil, nil
	case err == nil && state.Resolution != nil:
		// A redelivery of our own message: hand off the same resolution again
		// (deduplicated by message id), never a newer release.
		log.Info("redelivered: handing off the recorded resolution again")
		return fetchEvents(req, *state.Resolution, state.ResolvedFrom)
	case err != nil && !errors.Is(err, jetstream.ErrKeyNotFound):
		return nil, err
	}

	res, from, err := s.resolve(ctx, spec, log)
	if err != nil {
		return nil, err
	}
	if disk, ok := res.Asset(catalog.RoleDisk); !ok {
		return nil, stage.Permanent(fmt.Errorf("%s resolved without a disk", specString(spec)))
	} else if disk.Format == catalog.FormatRaw && req.Format == catalog.FormatQCOW2 {
		return nil, stage.Permanent(fmt.Errorf("%s publishes a raw disk; converting raw to qcow2 is not supported (ask for --format raw)", specString(spec)))
	}
	events, err := fetchEvents(req, res, from)
	if err != nil {
		return nil, err
	}
	if err := createState(ctx, s.KV, req.RequestID, requestState{
		Spec: spec, Format: req.Format, Roles: roles(res), ResolvedFrom: from, Resolution: &res,
	}); err != nil {
		return nil, err
	}
	log.Info("resolved", "from", from, "assets", len(events))
	return events, nil
}

// requestIDReusedError refuses a request whose id already names another request.
type requestIDReusedError struct {
	ID     string
	Spec   catalog.ImageSpec
	Format catalog.DiskFormat
}

func (e *requestIDReusedError) Error() string {
	return fmt.Sprintf("request id %s is already used by a request for %s (%s)", e.ID, specString(e.Spec), e.Format)
}

func roles(res catalog.Resolution) []catalog.Role {
	out := make([]catalog.Role, 0, len(res.Assets))
	for _, a := range res.Assets {
		out = append(out, a.Role)
	}
	return out
}

func fetchEvents(req messages.PrepareRequest, res catalog.Resolution, from string) ([]stage.Event, error) {
	rs := roles(res)
	events := make([]stage.Event, 0, len(res.Assets))
	for _, a := range res.Assets {
		ev, err := assetEvent(messages.SubjectFetch, "fetch", messages.AssetEvent{
			RequestID: req.RequestID, Spec: req.Spec, Format: req.Format, Roles: rs,
			ResolvedFrom: from, Asset: a, Status: messages.StatusResolved,
		})
		if err != nil {
			return nil, stage.Permanent(err)
		}
		events = append(events, ev)
	}
	return events, nil
}

func (s *ResolverStage) resolve(ctx context.Context, spec catalog.ImageSpec, log *slog.Logger) (catalog.Resolution, string, error) {
	cached, cerr := s.Store.LoadResolution(ctx, spec)
	if cerr == nil && s.MaxAge > 0 && time.Since(cached.ResolvedAt) < s.MaxAge {
		return cached, messages.ResolvedFromCache, nil
	}
	res, err := s.Resolver.Resolve(ctx, spec)
	if err == nil {
		if serr := s.Store.SaveResolution(ctx, res); serr != nil {
			log.Warn("could not record resolution", "err", serr)
		}
		return res, messages.ResolvedFromNetwork, nil
	}
	if cerr == nil && isRetryable(err) {
		log.Warn("resolution failed; using the stored resolution", "err", err, "resolved_at", cached.ResolvedAt)
		return cached, messages.ResolvedFromCache, nil
	}
	if isRetryable(err) {
		return catalog.Resolution{}, "", err
	}
	return catalog.Resolution{}, "", stage.Permanent(err)
}

func specString(s catalog.ImageSpec) string {
	return s.Distro + " " + s.Version + " " + string(s.Arch)
}

// requestState is the collector's join record for one request (KV value).
type requestState struct {
	Spec         catalog.ImageSpec  `json:"spec"`
	Format       catalog.DiskFormat `json:"format"`
	Roles        []catalog.Role     `json:"roles"`
	ResolvedFrom string             `json:"resolved_from,omitempty"`
	// Resolution is what the request was resolved to, reused on redelivery.
	Resolution *catalog.Resolution                  `json:"resolution,omitempty"`
	Done       map[catalog.Role]messages.AssetEvent `json:"done,omitempty"`
	// Final is the result once decided; it is republished on redelivery.
	Final *messages.Result `json:"final,omitempty"`
}

func loadState(ctx context.Context, kv jetstream.KeyValue, id string) (requestState, error) {
	st, _, err := loadStateRev(ctx, kv, id)
	return st, err
}

func loadStateRev(ctx context.Context, kv jetstream.KeyValue, id string) (requestState, uint64, error) {
	var st requestState
	e, err := kv.Get(ctx, id)
	if err != nil {
		return st, 0, err
	}
	if err := json.Unmarshal(e.Value(), &st); err != nil {
		return st, 0, fmt.Errorf("request %s: corrupt state: %w", id, err)
	}
	return st, e.Revision(), nil
}

func createState(ctx context.Context, kv jetstream.KeyValue, id string, st requestState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if _, err := kv.Create(ctx, id, b); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("request %s: record state: %w", id, err)
	}
	return nil
}
