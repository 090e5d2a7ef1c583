package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/vmprep/vmprep/internal/resolve"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// Resolver resolves an image spec to its verified assets (internal/resolve).
type Resolver interface {
	// Canonical validates spec against the catalog and spells it canonically
	// (a codename becomes its version), so that both spellings are one image.
	Canonical(spec image.Spec) (image.Spec, error)
	// Serials lists the builds published for spec's version, newest first;
	// an error wrapping catalog.ErrNoSerials when its catalog has none.
	Serials(ctx context.Context, spec image.Spec) ([]resolve.Serial, error)
	// Resolve resolves spec; the resolution names the trust roots it
	// rests on (Roots' answer for spec).
	Resolve(ctx context.Context, spec image.Spec) (catalog.Resolution, error)
	// Roots are the trust roots (keyring, catalog entry, mirror) a
	// resolution of spec rests on: stored records answer only under the same.
	Roots(spec image.Spec) (catalog.TrustRoots, error)
}

// ResolverStage handles prepare requests: it validates the request, resolves
// the spec (see resolve in resolution.go: stored resolutions, serials and the
// rollback check), records the request for the collector, and emits one fetch
// event per asset.
type ResolverStage struct {
	Resolver Resolver
	Store    *store.Store
	Requests *Requests
	// Medium refuses what the deployment's mode cannot carry (without an
	// object store every file is on Host: a request for another target).
	Medium Medium
	Host   string
	// MaxAge is how long a stored resolution is used without asking the network
	// again (0: always ask, falling back to the stored one when offline).
	MaxAge time.Duration
	Logger *slog.Logger
	// Progress, if set, tells the requester that resolving started and what
	// it retries.
	Progress ProgressFunc

	// flight makes concurrent requests for one spec share one resolution.
	flight singleflight.Group
}

// Handle implements stage.Handler.
func (s *ResolverStage) Handle(ctx context.Context, m stage.Message) ([]stage.Event, error) {
	ns, ok := messages.NamespaceOf(m.Subject)
	if !ok {
		return nil, stage.Poison(fmt.Errorf("prepare request on %q: not a request subject (vmprep.prepare or vmprep.prepare.<namespace>)", m.Subject))
	}
	var req messages.PrepareRequest
	if err := messages.Decode(m.Data, messages.TypePrepareRequest, &req); err != nil {
		return nil, stage.Poison(err)
	}
	if err := messages.ValidateRequestID(req.RequestID); err != nil {
		return nil, stage.Poison(err)
	}
	if req.Format == "" {
		req.Format = messages.DefaultFormat
	}
	if err := req.Validate(); err != nil {
		return nil, stage.Permanent(err)
	}
	spec, err := req.Spec.Normalize()
	if err != nil {
		return nil, stage.Permanent(err)
	}
	req.Spec = spec
	log := s.Logger.With("request_id", req.RequestID, "spec", specString(spec))
	if ns != "" {
		log = log.With("namespace", ns)
	}
	key := messages.RequestKey(ns, req.RequestID)

	if err := s.Medium.Accept(req, s.Host); err != nil {
		return nil, err
	}

	state, _, err := s.Requests.Load(ctx, key)
	switch {
	case err == nil && !state.sameRequest(req):
		// The id names a request for another image. Answer this requester
		// on the id's result subject — with a failure that echoes what it
		// asked for, so that nobody mistakes the other image's result for
		// its own — and leave the other request's state alone.
		log.Warn("request id reused for another image; refusing it", "used_for", specString(state.Spec), "format", state.Format)
		out, err := resultEvent(messages.Result{
			Namespace: ns, RequestID: req.RequestID, Status: messages.ResultFailed, Spec: req.Spec, Format: req.Format, Target: req.Target,
			Failure: &messages.Failure{Stage: messages.StageResolver, Code: messages.FailureRequestIDReused,
				Cause: fmt.Sprintf("request id %s is already used by a request for %s (%s); choose a new request id", req.RequestID, specString(state.Spec), state.Format)},
			CompletedAt: time.Now().UTC(),
		}, answerID(key, m))
		return []stage.Event{out}, err
	case err == nil && state.Final != nil:
		// The same request again: the same result again, so that a client
		// that subscribed after the first answer hears it too.
		log.Info("repeated request: publishing its result again")
		out, err := resultEvent(*state.Final, answerID(key, m))
		return []stage.Event{out}, err
	case err == nil && m.Delivery == 1:
		// Another message with this id created the state: a duplicate publish
		// of a request still in flight; its result will answer both.
		log.Info("duplicate request: already in progress")
		return nil, nil
	case err == nil && state.Resolution != nil:
		// A redelivery of our own message: hand off the same resolution again
		// (deduplicated by message id), never a newer release.
		log.Info("redelivered: handing off the recorded resolution again")
		return fetchEvents(ns, req, *state.Resolution, state.ResolvedFrom)
	case err != nil && !errors.Is(err, errStateNotFound):
		return nil, err
	}

	canonical, err := s.Resolver.Canonical(spec)
	if err != nil {
		return nil, stage.Permanent(&resolve.Error{Spec: spec, Op: resolve.OpPlan, Err: err})
	}
	s.report(messages.Progress{Namespace: ns, RequestID: req.RequestID, Stage: messages.StageResolver, Step: messages.StepResolve})
	ctx = resolve.WithRetryNotify(ctx, func(n resolve.RetryNotice) {
		cause := n.Err.Error()
		if !strings.Contains(cause, n.URL) {
			cause = n.URL + ": " + cause
		}
		s.report(messages.Progress{Namespace: ns, RequestID: req.RequestID, Stage: messages.StageResolver, Step: messages.StepResolve,
			Retrying: cause, RetryInSeconds: n.In.Seconds(), Attempt: n.Attempt, MaxAttempts: n.Attempts})
	})
	res, from, err := s.resolve(ctx, canonical, log)
	if err != nil {
		return nil, err
	}
	if disk, ok := res.Asset(image.RoleDisk); !ok {
		return nil, stage.Permanent(fmt.Errorf("%s resolved without a disk", specString(spec)))
	} else if disk.Format == image.FormatRaw && req.Format == image.FormatQCOW2 {
		return nil, stage.Permanent(fmt.Errorf("%s publishes a raw disk; converting raw to qcow2 is not supported (ask for --format raw)", specString(spec)))
	}
	events, err := fetchEvents(ns, req, res, from)
	if err != nil {
		return nil, err
	}
	if err := s.Requests.Create(ctx, key, requestState{
		Namespace: ns, Spec: spec, Format: req.Format, Target: req.Target, ClientConverts: req.ClientConverts, Clones: req.Clones,
		Roles: roles(res), ResolvedFrom: from, Resolution: &res,
	}); err != nil {
		return nil, err
	}
	log.Info("resolved", "from", from, "assets", len(events))
	return events, nil
}

func (s *ResolverStage) report(p messages.Progress) {
	if s.Progress != nil {
		s.Progress(p)
	}
}

// answerID is the publication id of an answer to request message m (key:
// messages.RequestKey): one per message (a redelivery of m is deduplicated).
func answerID(key string, m stage.Message) string {
	return fmt.Sprintf("result.%s.%d", key, m.Sequence)
}

func roles(res catalog.Resolution) []image.Role {
	out := make([]image.Role, 0, len(res.Assets))
	for _, a := range res.Assets {
		out = append(out, a.Role)
	}
	return out
}

func fetchEvents(ns string, req messages.PrepareRequest, res catalog.Resolution, from string) ([]stage.Event, error) {
	rs := roles(res)
	events := make([]stage.Event, 0, len(res.Assets))
	for _, a := range res.Assets {
		ev, err := assetEvent(messages.SubjectFetch, "fetch", messages.AssetEvent{
			Namespace: ns, RequestID: req.RequestID, Spec: req.Spec, Resolved: &res.Spec, Format: req.Format, Roles: rs,
			Target: req.Target, ClientConverts: req.ClientConverts, Clones: req.Clones,
			ResolvedFrom: from, Asset: a, Status: messages.StatusResolved,
		})
		if err != nil {
			return nil, stage.Permanent(err)
		}
		events = append(events, ev)
	}
	return events, nil
}

func specString(s image.Spec) string {
	return s.Distro + " " + s.Version + " " + string(s.Arch)
}
