package store

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
)

// Conventional link names in an image directory.
const (
	LinkKernel    = "vmlinuz"
	LinkInitramfs = "initramfs"
	LinkDisk      = "disk.img"
	LinkDiskRaw   = "disk.raw"
)

// maxRecordBytes caps how much of a record file is read.
const maxRecordBytes = 4 << 20

// specPath validates spec and returns its directory elements. The distro is
// lower-cased (it is case-insensitive); the arch must be set (the caller
// resolves "host" before storing).
func specPath(spec image.Spec) ([]string, error) {
	d := strings.ToLower(spec.Distro)
	for _, c := range []struct{ what, v string }{
		{"distro", d}, {"version", spec.Version}, {"arch", string(spec.Arch)},
	} {
		if err := content.ValidComponent(c.what, c.v); err != nil {
			return nil, fmt.Errorf("store: image %s/%s/%s: %w", spec.Distro, spec.Version, spec.Arch, err)
		}
	}
	return []string{d, spec.Version, string(spec.Arch)}, nil
}

// ImageDir returns images/<distro>/<version>/<arch> for spec (it may not exist).
func (s *Store) ImageDir(spec image.Spec) (string, error) {
	p, err := specPath(spec)
	if err != nil {
		return "", err
	}
	return s.path(append([]string{dirImages}, p...)...), nil
}

// LinkImage points images/<distro>/<version>/<arch>/<name> at target, which
// must be a blob or derived file of this store, with a relative symlink
// replaced atomically (symlink at a temporary name, rename). It returns the
// link's path. It waits while GC runs; a target GC removed meanwhile is an
// error (fs.ErrNotExist), so the caller fetches or derives it again. The
// wait for GC ends with ctx.
func (s *Store) LinkImage(ctx context.Context, spec image.Spec, name string, target string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	dir, err := s.ImageDir(spec)
	if err != nil {
		return "", err
	}
	if err := content.ValidComponent("link name", name); err != nil {
		return "", fmt.Errorf("store: link: %w", err)
	}
	if atomicfile.IsTemp(name) {
		return "", fmt.Errorf("store: link: %w: %q looks like a temporary name", content.ErrInvalidName, name)
	}
	abs, err := filepath.Abs(target)
	if err != nil {
		return "", fmt.Errorf("store: link %s: %w", name, err)
	}
	if d := filepath.Dir(abs); d != s.path(content.DirBlobs, "sha256") && d != s.path(content.DirDerived) {
		return "", fmt.Errorf("store: link %s: %w: target %s is not a blob or derived file of %s", name, content.ErrInvalidName, abs, s.Root())
	}
	// Shared GC lock: GC must not remove the target (or this link, as
	// dangling) between its scan and its removals. Checking the target under
	// the lock means a target GC removed is reported rather than linked.
	unlockGC, err := s.PublishLock(ctx)
	if err != nil {
		return "", fmt.Errorf("store: link %s: %w", name, err)
	}
	defer unlockGC()
	fi, err := os.Lstat(abs)
	if err != nil {
		return "", fmt.Errorf("store: link %s: target: %w", name, err)
	}
	if !fi.Mode().IsRegular() || atomicfile.IsTemp(filepath.Base(abs)) {
		return "", fmt.Errorf("store: link %s: %w: target %s is not a published file", name, content.ErrInvalidName, abs)
	}
	rel, err := filepath.Rel(s.Root(), dir)
	if err != nil {
		return "", fmt.Errorf("store: link %s: %w", name, err)
	}
	if _, err := s.MkdirInRoot(strings.Split(rel, string(filepath.Separator))...); err != nil {
		return "", fmt.Errorf("store: link %s: %w", name, err)
	}
	rel, err = filepath.Rel(dir, abs)
	if err != nil {
		return "", fmt.Errorf("store: link %s: %w", name, err)
	}
	link := filepath.Join(dir, name)
	if fi, err := os.Lstat(link); err == nil && fi.IsDir() {
		// rename cannot replace it, and no retry will: say what is in the way.
		return "", fmt.Errorf("store: link %s: %w: %s is a directory, not a link", name, content.ErrInvalidName, link)
	}
	if cur, err := os.Readlink(link); err == nil && cur == rel {
		return link, nil // already points there: a warm request writes nothing
	}
	if err := atomicfile.Symlink(rel, link); err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	return link, nil
}

func (s *Store) recordPath(spec image.Spec) (string, error) {
	p, err := specPath(spec)
	if err != nil {
		return "", err
	}
	return s.path(dirRecords, p[0], p[1], p[2]+".json"), nil
}

// SaveResolution records a verified resolution (atomically), so that a warm
// request needs neither the network nor a re-read of the manifests. It
// must name its trust roots: only requests under the same roots reuse it.
func (s *Store) SaveResolution(ctx context.Context, r catalog.Resolution) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	path, err := s.recordPath(r.Spec)
	if err != nil {
		return err
	}
	if r.Roots == nil {
		return fmt.Errorf("store: record %s: the resolution names no trust roots", path)
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("store: record %s: %w", path, err)
	}
	sp, _ := specPath(r.Spec) // valid: recordPath checked it
	if _, err := s.MkdirInRoot(dirRecords, sp[0], sp[1]); err != nil {
		return fmt.Errorf("store: record %s: %w", path, err)
	}
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("store: record: %w", err)
	}
	return nil
}

// LoadResolution returns the recorded resolution for spec if it was
// resolved under roots; a *OtherRootsError (ErrOtherRoots) if it was
// resolved under others; or content.ErrNotFound.
func (s *Store) LoadResolution(ctx context.Context, spec image.Spec, roots catalog.TrustRoots) (catalog.Resolution, error) {
	r, err := s.loadAnyResolution(ctx, spec)
	if err != nil {
		return catalog.Resolution{}, err
	}
	if err := checkRoots(r, roots); err != nil {
		return catalog.Resolution{}, err
	}
	return r, nil
}

// checkRoots fails with *OtherRootsError unless r was resolved under roots.
func checkRoots(r catalog.Resolution, roots catalog.TrustRoots) error {
	if r.Roots == nil || !r.Roots.Equal(roots) {
		return &OtherRootsError{Spec: r.Spec, Recorded: r.Roots, Now: roots}
	}
	return nil
}

// loadAnyResolution returns the recorded resolution for spec whatever its
// roots: for listings, never to answer a request.
func (s *Store) loadAnyResolution(ctx context.Context, spec image.Spec) (catalog.Resolution, error) {
	if err := ctx.Err(); err != nil {
		return catalog.Resolution{}, err
	}
	path, err := s.recordPath(spec)
	if err != nil {
		return catalog.Resolution{}, err
	}
	r, err := readRecord(path)
	if err != nil {
		return catalog.Resolution{}, err
	}
	if !strings.EqualFold(r.Spec.Distro, spec.Distro) || r.Spec.Version != spec.Version || r.Spec.Arch != spec.Arch {
		return catalog.Resolution{}, fmt.Errorf("store: record %s: holds %s/%s/%s, not the requested image", path, r.Spec.Distro, r.Spec.Version, r.Spec.Arch)
	}
	return r, nil
}

func readRecord(path string) (catalog.Resolution, error) {
	b, err := content.ReadCapped(path, maxRecordBytes)
	if notExist(err) {
		return catalog.Resolution{}, fmt.Errorf("store: record %s: %w", path, content.ErrNotFound)
	}
	if err != nil {
		return catalog.Resolution{}, fmt.Errorf("store: record: %w", err)
	}
	var r catalog.Resolution
	if err := json.Unmarshal(b, &r); err != nil {
		return catalog.Resolution{}, fmt.Errorf("store: record %s: %w", path, err)
	}
	return r, nil
}
