package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// useKindFleet is the kind of the store uses (internal/store/uses.go) by which
// a converter host keeps the builds of its selections.
const useKindFleet = "fleet"

// fleetDir is the directory, under the store root, of the holders of the
// fleet's uses: fleet/<selection>/<serial>/<role>, one small file per
// stored file of a build the host keeps. A holder's existence is the use
// (store.Use): removing a build's directory ends its uses, and the store's
// GC then frees its files unless something else — a clone, an image view,
// another selection — still uses them.
const fleetDir = "fleet"

// fleetSpace keeps and frees the builds of a host's selections.
type fleetSpace struct {
	store *store.Store
	// grace: files committed more recently are not freed (store.GCOptions.MinAge).
	grace time.Duration
}

// holder is what a holder file says: the stored file it keeps.
type holder struct {
	Base      string     `json:"base"`
	Selection string     `json:"selection"`
	Spec      image.Spec `json:"spec"`
	Role      image.Role `json:"role"`
}

func (s fleetSpace) buildDir(id, serial string) string {
	return filepath.Join(s.store.Root(), fleetDir, id, serial)
}

// keep records that the files of res (the build serial of selection id)
// are kept, and why (shown by `vmprep cache ls`).
func (s fleetSpace) keep(ctx context.Context, id string, res messages.Result, why string) error {
	dir := s.buildDir(id, res.Resolved.Serial)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for role, f := range res.Files {
		if f.Path == "" {
			continue
		}
		base, err := s.store.StoredFile(f.Path)
		if err != nil {
			return err
		}
		path := filepath.Join(dir, string(role))
		b, _ := json.Marshal(holder{Base: base, Selection: id, Spec: *res.Resolved, Role: role})
		if err := s.record(ctx, path, b, why); err != nil {
			return err
		}
	}
	return nil
}

// record writes holder path (content b) and its use, with why as the use's method.
func (s fleetSpace) record(ctx context.Context, path string, b []byte, why string) error {
	var h holder
	if err := json.Unmarshal(b, &h); err != nil {
		return fmt.Errorf("fleet holder %s: %w", path, err)
	}
	return s.store.RecordUse(ctx, store.Use{Kind: useKindFleet, Base: h.Base, Holder: path, Method: why, Pins: true}, func(*store.Use) error {
		return atomicfile.WriteFile(path, b, 0o644)
	})
}

// rewhy updates why the build serial of selection id is kept. A build
// this host never recorded (held before it kept builds) has nothing to update.
func (s fleetSpace) rewhy(ctx context.Context, id, serial, why string) error {
	dir := s.buildDir(id, serial)
	ents, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, e := range ents {
		path := filepath.Join(dir, e.Name())
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		if err := s.record(ctx, path, b, why); err != nil {
			return err
		}
	}
	return nil
}

// forget ends every use of selection id (unwanted) — and its image view
// unless viewNeeded says another selection of this host shows the same
// image — and lets the store's GC free what nothing else uses. It returns
// the bytes freed.
func (s fleetSpace) forget(ctx context.Context, id string, viewNeeded func(image.Spec) bool) (int64, error) {
	dir := filepath.Join(s.store.Root(), fleetDir, id)
	if spec, ok := s.specOf(dir); ok && !viewNeeded(spec) {
		if view, err := s.store.ImageDir(spec); err == nil {
			if err := os.RemoveAll(view); err != nil {
				return 0, err
			}
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return 0, err
	}
	return s.gc(ctx)
}

// specOf is the image a selection's holders keep, read from any of them.
func (s fleetSpace) specOf(dir string) (image.Spec, bool) {
	builds, _ := os.ReadDir(dir)
	for _, b := range builds {
		files, _ := os.ReadDir(filepath.Join(dir, b.Name()))
		for _, f := range files {
			data, err := os.ReadFile(filepath.Join(dir, b.Name(), f.Name()))
			var h holder
			if err == nil && json.Unmarshal(data, &h) == nil && h.Spec.Distro != "" {
				h.Spec.Serial = ""
				return h.Spec, true
			}
		}
	}
	return image.Spec{}, false
}

func (s fleetSpace) gc(ctx context.Context) (int64, error) {
	rep, err := s.store.GC(ctx, content.GCOptions{MinAge: s.grace})
	return rep.Freed, err
}

// free ends the uses of the given builds of selection id and lets the
// store's GC free what nothing else uses. It returns the bytes freed.
func (s fleetSpace) free(ctx context.Context, id string, serials []string) (int64, error) {
	for _, serial := range serials {
		if err := os.RemoveAll(s.buildDir(id, serial)); err != nil {
			return 0, err
		}
	}
	return s.gc(ctx)
}
