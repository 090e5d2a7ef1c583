package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/pkg/clone"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// KindClone is the Use.Kind of a disk clone made from the cache.
const KindClone = "clone"

// CloneOptions are clone.Options and what the store records with the clone.
type CloneOptions struct {
	clone.Options
	// Request, if set, names what asked for the clone (a prepare request's
	// key); it is recorded with the use (Use.Request).
	Request string
}

// CloneDisk makes a writable disk at dest from base (a disk of this cache,
// or an images/ link to one) with clone.Clone, and records the use, so that
// GC keeps the base while the clone shares its blocks or names it as its
// backing file. The clone is made with GC held off: the base cannot be
// removed between the clone and its record.
func (s *Store) CloneDisk(ctx context.Context, base, dest string, opts CloneOptions) (clone.Result, error) {
	rel, err := s.StoredFile(base)
	if err != nil {
		return clone.Result{}, err
	}
	if dest, err = filepath.Abs(dest); err != nil {
		return clone.Result{}, fmt.Errorf("clone %s: %w", dest, err)
	}
	var res clone.Result
	err = s.RecordUse(ctx, Use{Kind: KindClone, Base: rel, Holder: dest, Request: opts.Request}, func(u *Use) error {
		var err error
		res, err = clone.Clone(ctx, base, dest, opts.Options)
		u.Method, u.Pins, u.Backing = string(res.Method), res.Method.Shares(), res.Method == clone.MethodOverlay
		return err
	})
	return res, err
}

// UseOf returns the record of kind held by holder (an absolute path), checked
// for liveness like Uses, and false when there is none.
func (s *Store) UseOf(kind, holder string) (UseStatus, bool, error) {
	if err := content.ValidComponent("use kind", kind); err != nil {
		return UseStatus{}, false, fmt.Errorf("store: %w", err)
	}
	us := UseStatus{Record: s.path(dirUses, useName(kind, holder))}
	b, err := content.ReadCapped(us.Record, 64<<10)
	if errors.Is(err, fs.ErrNotExist) {
		return UseStatus{}, false, nil
	}
	if err == nil {
		err = json.Unmarshal(b, &us.Use)
	}
	if err != nil {
		return UseStatus{}, false, fmt.Errorf("store: use record %s: %w", us.Record, err)
	}
	if us.Kind != kind || us.Holder != holder {
		return UseStatus{}, false, fmt.Errorf("store: use record %s is for %s %s, not %s %s", us.Record, us.Kind, us.Holder, kind, holder)
	}
	us.BasePath = s.path(filepath.FromSlash(us.Base))
	us.Live, us.Stale, us.Why = s.useLive(us.Use)
	return us, true, nil
}

// RootOf returns the root of the store that holds disk, a file of a store
// (blobs/sha256/<hex> or derived/<name>) or an images/ link to one.
func RootOf(disk string) (string, error) {
	real, err := filepath.EvalSymlinks(disk)
	if err == nil {
		real, err = filepath.Abs(real)
	}
	if err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	dir := filepath.Dir(real)
	switch {
	case filepath.Base(dir) == content.DirDerived:
		return filepath.Dir(dir), nil
	case filepath.Base(dir) == "sha256" && filepath.Base(filepath.Dir(dir)) == content.DirBlobs:
		return filepath.Dir(filepath.Dir(dir)), nil
	}
	return "", fmt.Errorf("store: %s is not a file of a vmprep cache (want one under %s/sha256/ or %s/)", disk, content.DirBlobs, content.DirDerived)
}

// Clone makes a writable disk at dest, for one VM, from the disk of res, a
// prepared result whose files are on this host (a backend's own cache, or
// the target host's). It is the cheapest clone the file system allows (see
// package clone) and is recorded in the cache that holds the disk, so that
// cache gc keeps the base while the clone needs it.
//
// opts.Format, when empty, is the disk's own format: a raw disk is cloned
// (reflink, clonefile, else a sparse copy), a qcow2 disk gets a qcow2
// overlay. The Result's Method says which it was.
func Clone(ctx context.Context, res messages.Result, dest string, opts clone.Options) (clone.Result, error) {
	if res.Status != messages.ResultPrepared {
		return clone.Result{}, fmt.Errorf("clone %s: request %s is %s, not prepared", dest, res.RequestID, res.Status)
	}
	disk := res.Disk
	if disk == "" {
		disk = res.Files[image.RoleDisk].Path
	}
	if disk == "" {
		return clone.Result{}, fmt.Errorf("clone %s: the result of request %s names no disk on a host", dest, res.RequestID)
	}
	root, err := RootOf(disk)
	if errors.Is(err, fs.ErrNotExist) && res.Host != "" {
		return clone.Result{}, fmt.Errorf("clone %s: the disk is on host %s, not here: %w", dest, res.Host, err)
	}
	if err != nil {
		return clone.Result{}, fmt.Errorf("clone %s: %w", dest, err)
	}
	st, err := Open(root)
	if err != nil {
		return clone.Result{}, fmt.Errorf("clone %s: %w", dest, err)
	}
	if opts.Format == "" && res.DiskFormat == image.FormatQCOW2 {
		opts.Format = clone.FormatQcow2
	}
	return st.CloneDisk(ctx, disk, dest, CloneOptions{Options: opts, Request: messages.RequestKey(res.Namespace, res.RequestID)})
}
