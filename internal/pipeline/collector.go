package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/messages"
	"github.com/vmprep/vmprep/pkg/stage"
	"github.com/vmprep/vmprep/pkg/store"
)

// CollectorStage joins a request's finished assets. The join is a
// compare-and-set on the request's KV entry, so concurrent collectors and
// redeliveries agree; the result is decided once, stored in the entry, and
// published with a deterministic id (republished harmlessly on redelivery).
type CollectorStage struct {
	Store  *store.Store
	KV     jetstream.KeyValue
	Logger *slog.Logger
}

// viewName is the file name of each role in images/<distro>/<version>/<arch>/.
func viewName(ev messages.AssetEvent) string {
	role, format := ev.Asset.Role, ev.FileFormat
	switch role {
	case catalog.RoleKernel:
		if ev.Status == messages.StatusConverted {
			return "vmlinux" // unpacked from a gzip-compressed vmlinuz
		}
		return "vmlinuz"
	case catalog.RoleInitramfs:
		return "initramfs"
	}
	if format == catalog.FormatRaw {
		return "disk.raw"
	}
	return "disk.img"
}

// Handle implements stage.Handler.
func (s *CollectorStage) Handle(ctx context.Context, m stage.Message) ([]stage.Event, error) {
	ev, err := decodeAsset(m)
	if err != nil {
		return nil, err
	}
	for attempt := 0; attempt < 20; attempt++ {
		st, rev, err := loadStateRev(ctx, s.KV, ev.RequestID)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			// A failure before the resolver recorded the request.
			st, rev = requestState{Spec: ev.Spec, Format: ev.Format, Roles: ev.Roles, ResolvedFrom: ev.ResolvedFrom}, 0
		} else if err != nil {
			return nil, err
		}
		if st.Final == nil {
			if st.Done == nil {
				st.Done = map[catalog.Role]messages.AssetEvent{}
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
				if errors.Is(err, store.ErrInvalidName) || errors.Is(err, store.ErrNotFound) {
					return nil, stage.Permanent(err)
				}
				return nil, err
			}
			st.Final = final
			b, err := json.Marshal(st)
			if err != nil {
				return nil, stage.Permanent(err)
			}
			if rev == 0 {
				_, err = s.KV.Create(ctx, ev.RequestID, b)
			} else {
				_, err = s.KV.Update(ctx, ev.RequestID, b, rev)
			}
			if errors.Is(err, jetstream.ErrKeyExists) || isWrongRevision(err) {
				continue // another collector got there first: re-read and merge
			}
			if err != nil {
				return nil, err
			}
		}
		if st.Final == nil {
			return nil, nil // still waiting for other assets
		}
		out, err := resultEvent(*st.Final)
		if err != nil {
			return nil, stage.Permanent(err)
		}
		return []stage.Event{out}, nil
	}
	return nil, fmt.Errorf("request %s: too much contention on its state", ev.RequestID)
}

func isWrongRevision(err error) bool {
	return errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists)
}

// decide returns the final result when the request is complete (all roles
// done, or any failed), else nil. On success it also links the user-facing
// images/<distro>/<version>/<arch>/ view. The paths in the result are found
// in the store from the digests, not taken from the events: they name
// immutable, verified files.
func (s *CollectorStage) decide(ctx context.Context, st requestState, id string) (*messages.Result, error) {
	res := &messages.Result{RequestID: id, Spec: st.Spec, Format: st.Format, ResolvedFrom: st.ResolvedFrom, CompletedAt: time.Now().UTC()}
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
	res.Files = map[catalog.Role]messages.File{}
	for _, r := range st.Roles {
		ev := st.Done[r]
		path, err := s.storedPath(ctx, ev)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", r, err)
		}
		view, err := s.Store.LinkImage(st.Spec, viewName(ev), path)
		if err != nil {
			return nil, fmt.Errorf("link %s into the images view: %w", r, err)
		}
		res.View = filepath.Dir(view)
		f := messages.File{Path: path, Digest: ev.Asset.Digest, Size: ev.Size, URL: ev.Asset.URL}
		if ev.Status == messages.StatusConverted {
			// The published digest vouches for the source; this file is derived from it.
			f.Digest, f.DerivedFrom = digest.Digest{}, ev.Asset.Digest
		}
		switch r {
		case catalog.RoleKernel:
			res.Kernel = path
		case catalog.RoleInitramfs:
			res.Initramfs = path
		case catalog.RoleDisk:
			f.Format = ev.FileFormat
			res.Disk, res.DiskFormat = path, ev.FileFormat
		}
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
	return res, nil
}

// storedPath finds the file an asset event stands for in the store.
func (s *CollectorStage) storedPath(ctx context.Context, ev messages.AssetEvent) (string, error) {
	blob, err := s.Store.Lookup(ctx, ev.Asset.Digest)
	if err != nil {
		return "", err
	}
	if ev.Status != messages.StatusConverted {
		return blob.Path, nil
	}
	key := store.DerivedKey{Source: blob.SHA256, Converter: ConverterName, Format: string(catalog.FormatRaw)}
	if ev.Asset.Role == catalog.RoleKernel {
		key = store.DerivedKey{Source: blob.SHA256, Converter: KernelUnpackerName, Format: "vmlinux"}
	}
	return s.Store.Derived(ctx, key)
}
