package pipeline

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"

	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/pkg/clone"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// StepClone is the converter's progress step while it copies a clone (a
// reflink, clonefile or overlay is instant and reports nothing).
const StepClone = "clone"

// CloneDir returns dir as the clone directory of a converter host: an
// absolute, symlink-free path of an existing directory, so that every clone
// is a name directly inside it.
func CloneDir(dir string) (string, error) {
	abs, err := filepath.Abs(dir)
	if err == nil {
		abs, err = filepath.EvalSymlinks(abs)
	}
	if err != nil {
		return "", fmt.Errorf("clone directory: %w", err)
	}
	fi, err := os.Stat(abs)
	if err != nil {
		return "", fmt.Errorf("clone directory: %w", err)
	}
	if !fi.IsDir() {
		return "", fmt.Errorf("clone directory %s is not a directory", abs)
	}
	return abs, nil
}

// makeClones makes the clones ev's request asked for from disk, the
// request's disk on this host, in the host's clone directory. What a request
// may do there is narrow: name plain files directly inside the directory,
// never replace a file unless it asks to (force) and the file is a clone
// this host recorded. The clone of a redelivered event is found by its
// record (the same request, the same base) and reported, not made again.
func (s *ConverterStage) makeClones(ctx context.Context, ev messages.AssetEvent, disk string, report ProgressFunc) ([]messages.Clone, error) {
	if len(ev.Clones) == 0 {
		return nil, nil
	}
	if s.CloneDir == "" {
		return nil, stage.Permanent(fmt.Errorf("host %s has no clone directory: its converter makes clones only when started with --clone-dir DIR", s.Host))
	}
	// The resolver checked the request; this host checks again what it is
	// asked to write.
	req := messages.PrepareRequest{RequestID: ev.RequestID, Spec: ev.Spec, Format: ev.Format, Target: ev.Target, ClientConverts: ev.ClientConverts, Clones: ev.Clones}
	if err := req.Validate(); err != nil {
		return nil, stage.Permanent(err)
	}
	base, err := s.Store.StoredFile(disk)
	if err != nil {
		return nil, err
	}
	key := messages.RequestKey(ev.Namespace, ev.RequestID)
	// Each clone's path is locked (a store lock: across this host's
	// processes) from its decision to its record, so that two requests
	// naming one file cannot both decide to replace it. Taken in one
	// order, so that requests naming the same files never wait on each
	// other in a cycle.
	locks := make([]string, 0, len(ev.Clones))
	for _, c := range ev.Clones {
		locks = append(locks, cloneLockName(filepath.Join(s.CloneDir, c.Name)))
	}
	slices.Sort(locks)
	for _, name := range locks {
		unlock, err := s.Store.Lock(ctx, name)
		if err != nil {
			return nil, err
		}
		defer func() { _ = unlock() }()
	}
	// Every name is decided before any clone is made: a request refused
	// for one name leaves no clones of the others behind.
	out := make([]messages.Clone, len(ev.Clones))
	made := make([]bool, len(ev.Clones))
	for i, c := range ev.Clones {
		dest := filepath.Join(s.CloneDir, c.Name)
		if filepath.Dir(dest) != s.CloneDir {
			return nil, stage.Permanent(fmt.Errorf("clone %q: not a name inside the clone directory %s", c.Name, s.CloneDir))
		}
		before, err := s.cloneOnce(c, dest, base, key)
		if err != nil {
			return nil, fmt.Errorf("clone %s: %w", c.Name, err)
		}
		if before != nil {
			out[i], made[i] = *before, true
		}
	}
	for i, c := range ev.Clones {
		if made[i] {
			continue
		}
		format := messages.CloneFormat(c, ev.Format)
		opts := store.CloneOptions{Request: key, Options: clone.Options{Format: clone.Format(format), Size: c.Size, Force: c.Force,
			Progress: func(done, total int64) {
				report(messages.Progress{Namespace: ev.Namespace, RequestID: ev.RequestID, Stage: messages.StageConverter, Step: StepClone, Asset: image.RoleDisk, Done: done, Total: total})
			}}}
		res, err := s.Store.CloneDisk(ctx, disk, filepath.Join(s.CloneDir, c.Name), opts)
		if errors.Is(err, clone.ErrExists) || errors.Is(err, clone.ErrShrink) {
			err = stage.Permanent(err)
		}
		if err != nil {
			return nil, fmt.Errorf("clone %s: %w", c.Name, err)
		}
		out[i] = messages.Clone{Name: c.Name, Path: res.Path, Method: string(res.Method), Format: format}
		s.Logger.Info("cloned", "request_id", ev.RequestID, "path", res.Path, "method", res.Method)
	}
	return out, nil
}

// cloneLockName names the store lock of clone path dest.
func cloneLockName(dest string) string {
	h := sha256.Sum256([]byte(dest))
	return "clone-" + hex.EncodeToString(h[:16])
}

// cloneOnce decides what to do about an existing file at dest: nothing
// there (nil, nil: make the clone); this request's own clone of base, made
// before a redelivery (that clone); a clone this host recorded, which c may
// replace with Force if a request of the same namespace made it (nil, nil);
// anything else is refused. A clone is a running VM's disk: another
// tenant naming it must not replace it.
func (s *ConverterStage) cloneOnce(c messages.CloneRequest, dest, base, key string) (*messages.Clone, error) {
	fi, err := os.Lstat(dest)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		kind := "special file"
		switch {
		case fi.Mode()&fs.ModeSymlink != 0:
			kind = "symlink"
		case fi.IsDir():
			kind = "directory"
		}
		return nil, stage.Permanent(fmt.Errorf("%s exists and is a %s, not a clone: not replaced", dest, kind))
	}
	use, recorded, err := s.Store.UseOf(store.KindClone, dest)
	if err != nil {
		return nil, err
	}
	recorded = recorded && !use.Stale // the record is of the file there now
	switch {
	case recorded && use.Request == key && use.Base == base:
		format := image.FormatRaw
		if use.Method == string(clone.MethodOverlay) {
			format = image.FormatQCOW2
		}
		return &messages.Clone{Name: c.Name, Path: dest, Method: use.Method, Format: format}, nil
	case !c.Force:
		return nil, stage.Permanent(fmt.Errorf("%s exists: %w (a request may replace only a clone this host made, with force)", dest, clone.ErrExists))
	case !recorded:
		return nil, stage.Permanent(fmt.Errorf("%s exists and is not a clone this host recorded: not replaced, even with force", dest))
	case messages.NamespaceOfKey(use.Request) != messages.NamespaceOfKey(key):
		return nil, stage.Permanent(fmt.Errorf("%s is a clone of another namespace: not replaced, even with force", dest))
	}
	return nil, nil
}
