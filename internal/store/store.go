// Package store is the image/records layer over the content store
// (internal/content): a user-facing images/ tree of symlinks into the
// content, and a record of every verified resolution, per image and per
// build, that make a warm request cheap and possible offline. It also
// records uses of stored files from outside (clones), and tells the content
// store's List and GC what all of these keep alive (References).
//
// Layout under the root, beside the content store's (see internal/content):
//
//	images/<distro>/<version>/<arch>/<name>    relative symlinks into blobs/ or derived/
//	records/<distro>/<version>/<arch>.json     verified catalog.Resolution
//	serials/<distro>/<version>/<arch>/…        per-build records and the newest serial (serials.go)
//	uses/<kind>-<hash>.json    uses from outside the store (clones) that keep a file (uses.go)
//
// Publishing: the content store's Commit and PutDerived, then LinkImage for
// each file and SaveResolution for the resolution. GC keeps blobs that
// records or image links name, derived files that image links name, files
// live uses pin, and anything younger than content.GCOptions.MinAge.
// LinkImage and RecordUse hold the content store's publish lock shared, so
// GC never sees half a publication.
package store

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
)

// ErrOtherRoots: a record exists but was resolved under other trust roots
// (see *OtherRootsError); it answers no request under these.
var ErrOtherRoots = errors.New("resolved under other trust roots")

// OtherRootsError is a stored resolution of Spec that was resolved under
// other trust roots (keyring, catalog entry, mirror) than the caller's.
type OtherRootsError struct {
	Spec image.Spec
	// Recorded are the roots the record names (nil for a record written
	// before records named theirs); Now are the caller's.
	Recorded *catalog.TrustRoots
	Now      catalog.TrustRoots
}

func (e *OtherRootsError) Error() string {
	name := strings.ToLower(e.Spec.Distro) + " " + e.Spec.Version + " " + string(e.Spec.Arch)
	if e.Spec.Serial != "" {
		name += " (serial " + e.Spec.Serial + ")"
	}
	return fmt.Sprintf("the cached build of %s was resolved under other trust roots (%s)", name, catalog.Differences(e.Recorded, e.Now))
}

// Unwrap makes errors.Is(err, ErrOtherRoots) hold.
func (e *OtherRootsError) Unwrap() error { return ErrOtherRoots }

// Directory names under the root (the content store has its own).
const (
	dirImages  = "images"
	dirRecords = "records"
	dirSerials = "serials"
)

// Store is the image/records layer over a content store rooted at the same
// directory; the content store's methods (Lookup, Commit, PutDerived, Lock,
// Verify …) are its own. It is safe for concurrent use by many goroutines,
// and by many processes sharing the same root.
type Store struct {
	*content.Store

	// gcAfterScan, if set (tests only), runs between GC's scan and its removals.
	gcAfterScan func()
}

// Open opens the store at root, creating its layout if needed.
func Open(root string, opts ...content.Option) (*Store, error) {
	cs, err := content.Open(root, opts...)
	if err != nil {
		return nil, err
	}
	s := &Store{Store: cs}
	// The layout inside the root may not be a symlink (see MkdirInRoot).
	for _, d := range []string{dirImages, dirRecords, dirSerials, dirUses} {
		if _, err := s.MkdirInRoot(d); err != nil {
			return nil, fmt.Errorf("store: open %s: %w", s.Root(), err)
		}
	}
	return s, nil
}

func (s *Store) path(elem ...string) string {
	return filepath.Join(append([]string{s.Root()}, elem...)...)
}

// List returns every blob and derived file with its size and what refers to
// it (image links, records, uses). It reads no content.
func (s *Store) List(ctx context.Context) ([]content.Entry, error) {
	return s.Store.List(ctx, s)
}

// GC removes blobs and derived files that no image link, record or live use
// (a clone, see Use) references, the records of dead uses, dangling image
// links, and what the content store's GC removes of its own (stale partial
// downloads and temporaries, orphaned stamps and aliases).
func (s *Store) GC(ctx context.Context, opts content.GCOptions) (content.GCReport, error) {
	return s.Store.GC(ctx, opts, gcReferrer{s})
}

// gcReferrer is s as GC's Referrer, with the tests' hook after the scan.
type gcReferrer struct{ s *Store }

func (r gcReferrer) References(ctx context.Context, inv *content.Inventory) error {
	if err := r.s.References(ctx, inv); err != nil {
		return err
	}
	if r.s.gcAfterScan != nil {
		r.s.gcAfterScan()
	}
	return nil
}

func notExist(err error) bool { return errors.Is(err, os.ErrNotExist) }
