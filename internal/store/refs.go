package store

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/pkg/image"
)

// References marks in inv what this layer keeps — the blobs its records
// list, the files its image links point at, the files live uses pin — and
// adds its debris: temporaries, the records of dead uses, dangling links
// (in that order of removal). It makes *Store the content store's Referrer.
func (s *Store) References(ctx context.Context, inv *content.Inventory) error {
	if err := s.scanRecords(ctx, inv); err != nil {
		return err
	}
	dangling, err := s.scanImages(ctx, inv)
	if err != nil {
		return err
	}
	if err := s.scanUses(ctx, inv); err != nil {
		return err
	}
	inv.Drop = append(inv.Drop, dangling...)
	return nil
}

var _ content.Referrer = (*Store)(nil)

// walkFiles calls fn for every file under root, noting temp files in inv
// instead, and stops when ctx ends.
func walkFiles(ctx context.Context, root string, inv *content.Inventory, fn func(p string, de fs.DirEntry) error) error {
	return filepath.WalkDir(root, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if de.IsDir() {
			return nil
		}
		if atomicfile.IsTemp(de.Name()) {
			inv.Temps = append(inv.Temps, p)
			return nil
		}
		return fn(p, de)
	})
}

func (s *Store) scanRecords(ctx context.Context, inv *content.Inventory) error {
	root := s.path(dirRecords)
	return walkFiles(ctx, root, inv, func(p string, de fs.DirEntry) error {
		if !strings.HasSuffix(de.Name(), ".json") {
			return nil
		}
		r, err := readRecord(p)
		if err != nil {
			s.Logger().Warn("store: unreadable record", "path", p, "err", err)
			return nil
		}
		for _, a := range r.Assets {
			h := inv.SHA256Of(a.Digest)
			if h == "" {
				continue
			}
			if e := inv.Blobs[h]; e != nil {
				e.Records = appendSpec(e.Records, r.Spec)
			}
		}
		return nil
	})
}

func appendSpec(specs []image.Spec, sp image.Spec) []image.Spec {
	for _, x := range specs {
		if x == sp {
			return specs
		}
	}
	return append(specs, sp)
}

// scanImages attaches image links to the entries they point at and returns
// the dangling ones.
func (s *Store) scanImages(ctx context.Context, inv *content.Inventory) (dangling []content.GCItem, err error) {
	root := s.path(dirImages)
	blobDir := s.path(content.DirBlobs, "sha256")
	derivedDir := s.path(content.DirDerived)
	err = walkFiles(ctx, root, inv, func(p string, de fs.DirEntry) error {
		if de.Type()&fs.ModeSymlink == 0 {
			return nil
		}
		target, err := os.Readlink(p)
		if err != nil {
			return nil
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(p), target)
		}
		target = filepath.Clean(target)
		rel, _ := filepath.Rel(root, p)
		rel = filepath.ToSlash(rel)
		var e *content.Entry
		switch filepath.Dir(target) {
		case blobDir:
			e = inv.Blobs[filepath.Base(target)]
		case derivedDir:
			e = inv.Derived[filepath.Base(target)]
		}
		if e == nil {
			dangling = append(dangling, content.GCItem{Kind: "link", Path: p, Reason: "dangling image link"})
			return nil
		}
		e.Images = append(e.Images, rel)
		return nil
	})
	return dangling, err
}
