package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/vmprep/vmprep/internal/place"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// CollectorStage joins a request's finished assets. The join is a
// compare-and-set on the request's KV entry, so concurrent collectors and
// redeliveries agree; the result is decided once, stored in the entry, and
// published with a deterministic id (republished harmlessly on redelivery).
type CollectorStage struct {
	Store    *store.Store
	Requests *Requests
	// Host names this host in results of a deployment that shares one cache
	// directory (where the paths are valid).
	Host string
	// Medium is the deployment's mode: which done events it admits and
	// where their files are (Medium.Admit, Medium.Collect).
	Medium Medium
	Logger *slog.Logger
}

// viewName is the file name of the event's file in the images view.
func viewName(ev messages.AssetEvent) string {
	return place.ViewName(ev.Asset.Role, ev.Status == messages.StatusConverted, ev.FileFormat)
}

// Handle implements stage.Handler.
func (s *CollectorStage) Handle(ctx context.Context, m stage.Message) ([]stage.Event, error) {
	if err := DoneFromPublisher(ctx, m); err != nil {
		if errors.Is(err, errRefused) {
			s.Logger.Warn("refused a done event", "subject", m.Subject, "err", err)
		}
		return nil, err
	}
	ev, err := decodeAsset(m)
	if err != nil {
		return nil, err
	}
	for attempt := 0; attempt < 20; attempt++ {
		key := messages.RequestKey(ev.Namespace, ev.RequestID)
		st, rev, err := s.Requests.Load(ctx, key)
		var recorded *requestState
		if err == nil {
			recorded = &st
		} else if !errors.Is(err, errStateNotFound) {
			return nil, err
		}
		admitted, err := s.admit(m.Subject, recorded, ev)
		if err != nil {
			s.Logger.Warn("refused a done event", "subject", m.Subject, "request", key, "err", err)
			return nil, err
		}
		if recorded == nil {
			// A failure before the resolver recorded the request (admit
			// lets only the resolver say so); rev is the key's last revision,
			// which others' entries may have moved on.
			st = requestState{Namespace: ev.Namespace, Spec: ev.Spec, Format: ev.Format, Target: ev.Target, ClientConverts: ev.ClientConverts, Clones: ev.Clones, ResolvedFrom: ev.ResolvedFrom}
		}
		ev := admitted
		if st.Final == nil {
			if st.Done == nil {
				st.Done = map[image.Role]messages.AssetEvent{}
			}
			if ev.Status == messages.StatusFailed || validRole(ev.Asset.Role) {
				key := ev.Asset.Role
				if ev.Status == messages.StatusFailed && key == "" {
					key = "request"
				}
				st.Done[key] = ev
			}
			final, err := s.decide(ctx, st, ev.RequestID)
			if err != nil {
				return nil, err
			}
			st.Final = final
			err = s.Requests.Save(ctx, key, st, rev)
			if errors.Is(err, errStateChanged) {
				continue // another collector got there first: re-read and merge
			}
			if err != nil {
				return nil, err
			}
		}
		if st.Final == nil {
			return nil, nil // still waiting for other assets
		}
		out, err := resultEvent(*st.Final, "result."+key)
		if err != nil {
			return nil, stage.Permanent(err)
		}
		return []stage.Event{out}, nil
	}
	return nil, fmt.Errorf("request %s: too much contention on its state", ev.RequestID)
}

// decide returns the final result when the request is complete (all roles
// done, or any failed), else nil. On success it also links the user-facing
// images/<distro>/<version>/<arch>/ view. The paths in the result are found
// in the store from the digests, not taken from the events: they name
// immutable, verified files.
func (s *CollectorStage) decide(ctx context.Context, st requestState, id string) (*messages.Result, error) {
	res := &messages.Result{Namespace: st.Namespace, RequestID: id, Spec: st.Spec, Format: st.Format, Target: st.Target, ResolvedFrom: st.ResolvedFrom, CompletedAt: time.Now().UTC()}
	for _, ev := range st.Done {
		if ev.Status == messages.StatusFailed {
			res.Status, res.Failure = messages.ResultFailed, ev.Failure
			if res.Failure == nil {
				res.Failure = &messages.Failure{Stage: "unknown", Cause: "failed without a reason"}
			}
			return res, nil
		}
	}
	if len(st.Roles) == 0 {
		return nil, nil
	}
	for _, r := range st.Roles {
		if _, ok := st.Done[r]; !ok {
			return nil, nil
		}
	}
	res.Status = messages.ResultPrepared
	res.Files = map[image.Role]messages.File{}
	// The view is the resolved image's: a codename and its number are one.
	img := st.Spec
	if st.Resolution != nil {
		img = st.Resolution.Spec
		res.Resolved = &img
		res.Unpinned = st.Resolution.Unpinned
	}
	hosts := map[string]bool{}
	linked := false
	for _, r := range st.Roles {
		ev := st.Done[r]
		f := messages.File{Digest: ev.Asset.Digest, Size: ev.Size, URL: ev.Asset.URL, Object: ev.Object}
		if ev.Status == messages.StatusConverted {
			// The published digest vouches for the source; this file is derived from it.
			f.Digest, f.DerivedFrom = digest.Digest{}, ev.Asset.Digest
		}
		if r == image.RoleDisk {
			f.Format = ev.FileFormat
			res.DiskFormat = ev.FileFormat
			res.Clones = ev.Cloned
		}
		c, err := s.Medium.Collect(ctx, s, img, ev)
		if err != nil {
			return nil, &assetError{Role: r, Err: err}
		}
		if c.Path != "" {
			f.Path, f.Host = c.Path, c.Host
		}
		if c.View != "" {
			res.View = c.View
		}
		linked = linked || c.Linked
		hosts[f.Host] = true
		res.Files[r] = f
		if ev.Asset.Trust.Signed {
			res.Signer = ev.Asset.Trust.Signer
		} else {
			res.Unsigned = true
		}
	}
	if res.Unsigned {
		res.Signer = ""
	}
	if linked {
		if err := s.Store.SetViewSerial(img); err != nil {
			return nil, fmt.Errorf("images view: %w", err)
		}
		var roots *catalog.TrustRoots
		if st.Resolution != nil {
			roots = st.Resolution.Roots
		}
		if err := s.Store.SetViewRoots(img, roots); err != nil {
			return nil, fmt.Errorf("images view: %w", err)
		}
	}
	// The top-level paths are set when every file is on one host.
	if len(hosts) == 1 && !hosts[""] {
		for r, f := range res.Files {
			res.Host = f.Host
			switch r {
			case image.RoleKernel:
				res.Kernel = f.Path
			case image.RoleInitramfs:
				res.Initramfs = f.Path
			case image.RoleDisk:
				res.Disk = f.Path
			}
		}
	} else {
		res.View = ""
	}
	return res, nil
}

// assetError says which asset a collector failure is about.
type assetError struct {
	Role image.Role
	Err  error
}

func (e *assetError) Error() string { return string(e.Role) + ": " + e.Err.Error() }
func (e *assetError) Unwrap() error { return e.Err }

// storedPath finds the file an asset event stands for in the store.
func (s *CollectorStage) storedPath(ctx context.Context, ev messages.AssetEvent) (string, error) {
	blob, err := s.Store.Lookup(ctx, ev.Asset.Digest)
	if err != nil {
		return "", err
	}
	if ev.Status != messages.StatusConverted {
		return blob.Path, nil
	}
	return s.Store.Derived(ctx, place.DerivedKeyOf(ev.Asset.Role, blob.SHA256))
}

// DoneFromPublisher checks that a done event was written by the one party that
// may publish on its subject: it carries that party's writer marker
// (messages.DoneWriterOf), read from its header block as stored and whole,
// and none of the server's relay markings. Permissions cannot restrict a
// reply subject, so a stage that may direct-get content it writes (the
// fetcher its leases, the verifier object metadata, a converter host its
// status) can have the server publish that content on any done subject;
// the stream stores it like the subject's publisher's own event. A refusal
// is poison (dead-lettered, never retried) and fails no request.
func DoneFromPublisher(ctx context.Context, m stage.Message) error {
	pub, host, ok := messages.DonePublisher(m.Subject)
	if !ok {
		return refuse("subject %q is no stage's done subject", m.Subject)
	}
	want, from := messages.DoneWriter(pub, host), publisher(pub, host)
	got, err := m.Writer(ctx)
	if errors.Is(err, stage.ErrNotWriter) {
		return refuse("%w; only %s may publish there (stages older than this collector mark no done events: upgrade them, the collector last)", err, from)
	}
	if err != nil {
		return fmt.Errorf("read who wrote the done event on %s: %w", m.Subject, err)
	}
	if got != want {
		return refuse("%s carries the writer marker %q, not %q: only %s may publish there", m.Subject, got, want, from)
	}
	return nil
}
