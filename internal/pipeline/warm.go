package pipeline

import (
	"context"
	"os"
	"time"

	"github.com/vmprep/vmprep/internal/place"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// Canonicalizer spells an image spec canonically and names the trust roots
// its resolution must rest on (a *catalog.Catalog).
type Canonicalizer interface {
	Canonical(spec image.Spec) (image.Spec, error)
	Roots(spec image.Spec) (catalog.TrustRoots, error)
}

// Warm answers a request from the local store alone — no NATS server, no
// stages — when the pipeline would find every step already done: the
// resolution is stored under cat's trust roots (keyring, catalog entry,
// mirror) and may be used without the network (a pinned build's record,
// or one younger than maxAge), every file is stored and
// still matches its stamp (re-hashed if it changed, as the verifier would),
// and every conversion is stored too. It walks the steps the stages would
// take on such a request, with their own functions (storedResolution, the
// verifier's checks and routing, the converter's derived keys, the
// collector's decide, which links the view), so the result is the
// pipeline's. ok is false when anything would need the pipeline: the
// network, a download, a conversion, or a failure it should report; the
// caller then starts the pipeline, which does that work.
//
// A request with a target or one whose client converts, and one that the
// pipeline would refuse, are never answered here. Warm records nothing
// about the request id (a deployment's request state): callers use it for
// requests with fresh ids only.
func Warm(ctx context.Context, st *store.Store, cat Canonicalizer, maxAge time.Duration, host string, req messages.PrepareRequest) (res messages.Result, ok bool) {
	if req.Format == "" {
		req.Format = messages.DefaultFormat
	}
	if req.Target != "" || req.ClientConverts || req.Validate() != nil {
		return messages.Result{}, false
	}
	spec, err := req.Spec.Normalize()
	if err != nil {
		return messages.Result{}, false
	}
	req.Spec = spec
	canonical, err := cat.Canonical(spec)
	if err != nil {
		return messages.Result{}, false
	}
	roots, err := cat.Roots(canonical)
	if err != nil {
		return messages.Result{}, false
	}
	resolution, ok := storedResolution(ctx, st, canonical, roots, maxAge)
	if !ok {
		return messages.Result{}, false
	}
	if disk, ok := resolution.Asset(image.RoleDisk); !ok || (disk.Format == image.FormatRaw && req.Format == image.FormatQCOW2) {
		return messages.Result{}, false
	}
	state := requestState{Spec: spec, Format: req.Format, Roles: roles(resolution), ResolvedFrom: messages.ResolvedFromCache,
		Resolution: &resolution, Done: map[image.Role]messages.AssetEvent{}}
	for _, a := range resolution.Assets {
		ev := messages.AssetEvent{RequestID: req.RequestID, Spec: spec, Resolved: &resolution.Spec, Format: req.Format,
			Roles: state.Roles, ResolvedFrom: messages.ResolvedFromCache, Asset: a}
		if ev, ok = warmAsset(ctx, st, ev); !ok {
			return messages.Result{}, false
		}
		state.Done[a.Role] = ev
	}
	collector := &CollectorStage{Store: st, Host: host, Medium: sharedCache{}}
	final, err := collector.decide(ctx, state, req.RequestID)
	if err != nil || final == nil || final.Status != messages.ResultPrepared {
		return messages.Result{}, false
	}
	// As the result reads once published (and decoded by a client).
	final.Header = messages.Header{V: messages.Version, Type: messages.TypeResult}
	return *final, true
}

// warmAsset is what the verifier and the converter would hand the collector
// for an asset whose file (and conversion) the store already has, or false.
func warmAsset(ctx context.Context, st *store.Store, ev messages.AssetEvent) (messages.AssetEvent, bool) {
	a := ev.Asset
	blob, err := st.Lookup(ctx, a.Digest)
	if err != nil {
		return ev, false
	}
	ev.Status, ev.Blob, ev.Path, ev.Size = messages.StatusVerified, blob.SHA256, blob.Path, blob.Size
	unpack := false
	if a.Role == image.RoleKernel {
		if unpack, err = place.KernelNeedsUnpack(blob); err != nil {
			return ev, false
		}
	}
	if a.Role == image.RoleDisk {
		if checkDeclaredFormat(blob.Path, a) != nil {
			return ev, false
		}
		ev.FileFormat = a.Format
	}
	if !needsConverting(ev, unpack) {
		return ev, true
	}
	path, err := st.Derived(ctx, place.DerivedKeyOf(a.Role, blob.SHA256))
	if err != nil {
		return ev, false
	}
	fi, err := os.Stat(path)
	if err != nil {
		return ev, false
	}
	ev.Status, ev.Path, ev.Size = messages.StatusConverted, path, fi.Size()
	if a.Role == image.RoleDisk {
		ev.FileFormat = image.FormatRaw
	}
	return ev, true
}
