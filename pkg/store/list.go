package store

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/image"
)

// EntryKind says whether an Entry is a blob or a derived artifact.
type EntryKind string

// Entry kinds.
const (
	KindBlob    EntryKind = "blob"
	KindDerived EntryKind = "derived"
)

// Entry is one stored file and what refers to it.
type Entry struct {
	Kind EntryKind `json:"kind"`
	Path string    `json:"path"`
	// Digest is a blob's SHA-256 (zero for derived files).
	Digest digest.Digest `json:"digest,omitzero"`
	// SparseSHA256 is a derived file's sparse digest as recorded when it was
	// produced (hex; see PutDerived), empty if unknown.
	SparseSHA256 string `json:"sparse_sha256,omitempty"`
	// Aliases are other digests (SHA-512) known to name this blob.
	Aliases []digest.Digest `json:"aliases,omitempty"`
	Size    int64           `json:"size"`
	// Allocated is the disk space the file takes: less than Size for a
	// sparse raw disk, whose holes take none.
	Allocated int64 `json:"allocated"`
	// Derived is set for derived files.
	Derived     *DerivedKey `json:"derived,omitempty"`
	CommittedAt time.Time   `json:"committed_at,omitzero"`
	// Images are the links (relative to images/) that point at it.
	Images []string `json:"images,omitempty"`
	// Records are the recorded resolutions that list a blob. (A derived file
	// is kept only by image links: once a new converter's output replaces it
	// in images/, the old one is garbage even though its source is recorded.)
	Records []image.Spec `json:"records,omitempty"`
	// Uses are the live uses from outside the store that keep it (clones:
	// an overlay naming it, a reflink sharing its blocks; see Use).
	Uses []UseRef `json:"uses,omitempty"`
}

// Referenced reports whether an image link, record or live use keeps the
// entry alive.
func (e Entry) Referenced() bool { return len(e.Images) > 0 || len(e.Records) > 0 || len(e.Uses) > 0 }

// inventory is one pass over the store's directories.
type inventory struct {
	blobs   map[string]*Entry // by SHA-256 hex
	derived map[string]*Entry // by file name
	// aliasTo maps an alias file path to the SHA-256 hex it names.
	aliasTo map[string]string
	// sha512 hex → SHA-256 hex
	bySHA512 map[string]string
	// dangling image links (target missing or outside blobs/derived)
	dangling []string
	// temporaries: leftovers of interrupted atomic writes
	temps []string
	// junk in derived/ that is not a derived key (a crashed producer's
	// temporary, or debris)
	derivedJunk []string
	// staleUses are use records whose holder is gone
	staleUses []UseStatus
}

func (s *Store) scan(ctx context.Context) (*inventory, error) {
	inv := &inventory{
		blobs:    map[string]*Entry{},
		derived:  map[string]*Entry{},
		aliasTo:  map[string]string{},
		bySHA512: map[string]string{},
	}
	blobDir := s.path(dirBlobs, "sha256")
	ents, err := os.ReadDir(blobDir)
	if err != nil {
		return nil, err
	}
	for _, de := range ents {
		name := de.Name()
		p := filepath.Join(blobDir, name)
		if atomicfile.IsTemp(name) {
			inv.temps = append(inv.temps, p)
			continue
		}
		d, err := digest.New(digest.SHA256, name)
		if err != nil || d.Hex != name || !de.Type().IsRegular() {
			inv.temps = append(inv.temps, p) // not ours: treat as debris
			continue
		}
		fi, err := de.Info()
		if err != nil {
			continue // removed meanwhile
		}
		e := &Entry{Kind: KindBlob, Path: p, Digest: d, Size: fi.Size(), Allocated: AllocatedSize(fi)}
		if st, err := readStamp(s.blobStampPath(name)); err == nil {
			e.CommittedAt = st.CommittedAt
		}
		inv.blobs[name] = e
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}

	derivedDir := s.path(dirDerived)
	ents, err = os.ReadDir(derivedDir)
	if err != nil {
		return nil, err
	}
	for _, de := range ents {
		name := de.Name()
		p := filepath.Join(derivedDir, name)
		k, ok := parseDerivedName(name)
		if !ok || !de.Type().IsRegular() {
			inv.derivedJunk = append(inv.derivedJunk, p)
			continue
		}
		fi, err := de.Info()
		if err != nil {
			continue
		}
		e := &Entry{Kind: KindDerived, Path: p, Size: fi.Size(), Allocated: AllocatedSize(fi), Derived: &k}
		if st, err := readStamp(s.derivedStampPath(name)); err == nil {
			e.CommittedAt = st.CommittedAt
			e.SparseSHA256 = st.SparseSHA256
		}
		inv.derived[name] = e
	}

	idxDir := s.path(dirIndex, string(digest.SHA512))
	ents, err = os.ReadDir(idxDir)
	if err != nil {
		return nil, err
	}
	for _, de := range ents {
		name := de.Name()
		p := filepath.Join(idxDir, name)
		if atomicfile.IsTemp(name) {
			inv.temps = append(inv.temps, p)
			continue
		}
		b, err := readCapped(p, 256)
		if err != nil {
			continue
		}
		target := strings.TrimSpace(string(b))
		inv.aliasTo[p] = target
		if d, err := digest.New(digest.SHA512, name); err == nil && d.Hex == name {
			inv.bySHA512[name] = target
			if e := inv.blobs[target]; e != nil {
				e.Aliases = append(e.Aliases, d)
			}
		}
	}

	for _, sub := range []string{"blobs", "derived"} {
		dir := s.path(dirStamps, sub)
		ents, err := os.ReadDir(dir)
		if err != nil {
			return nil, err
		}
		for _, de := range ents {
			if atomicfile.IsTemp(de.Name()) {
				inv.temps = append(inv.temps, filepath.Join(dir, de.Name()))
			}
		}
	}

	if err := s.scanRecords(ctx, inv); err != nil {
		return nil, err
	}
	if err := s.scanImages(ctx, inv); err != nil {
		return nil, err
	}
	if err := s.scanUses(ctx, inv); err != nil {
		return nil, err
	}
	return inv, nil
}

// sha256Of maps a digest named by a record to the SHA-256 hex of its blob.
func (inv *inventory) sha256Of(d digest.Digest) string {
	switch d.Algorithm {
	case digest.SHA256:
		return d.Hex
	case digest.SHA512:
		return inv.bySHA512[d.Hex]
	}
	return ""
}

// walkFiles calls fn for every file under root, noting temp files in inv
// instead, and stops when ctx ends.
func walkFiles(ctx context.Context, root string, inv *inventory, fn func(p string, de fs.DirEntry) error) error {
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
			inv.temps = append(inv.temps, p)
			return nil
		}
		return fn(p, de)
	})
}

func (s *Store) scanRecords(ctx context.Context, inv *inventory) error {
	root := s.path(dirRecords)
	return walkFiles(ctx, root, inv, func(p string, de fs.DirEntry) error {
		if !strings.HasSuffix(de.Name(), ".json") {
			return nil
		}
		r, err := readRecord(p)
		if err != nil {
			s.log.Warn("store: unreadable record", "path", p, "err", err)
			return nil
		}
		for _, a := range r.Assets {
			h := inv.sha256Of(a.Digest)
			if h == "" {
				continue
			}
			if e := inv.blobs[h]; e != nil {
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

func (s *Store) scanImages(ctx context.Context, inv *inventory) error {
	root := s.path(dirImages)
	blobDir := s.path(dirBlobs, "sha256")
	derivedDir := s.path(dirDerived)
	return walkFiles(ctx, root, inv, func(p string, de fs.DirEntry) error {
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
		var e *Entry
		switch filepath.Dir(target) {
		case blobDir:
			e = inv.blobs[filepath.Base(target)]
		case derivedDir:
			e = inv.derived[filepath.Base(target)]
		}
		if e == nil {
			inv.dangling = append(inv.dangling, p)
			return nil
		}
		e.Images = append(e.Images, rel)
		return nil
	})
}

// List returns every blob and derived file with its size and what refers to
// it (image links, records). It reads no content.
func (s *Store) List(ctx context.Context) ([]Entry, error) {
	inv, err := s.scan(ctx)
	if err != nil {
		return nil, err
	}
	return inv.entries(), nil
}

func (inv *inventory) entries() []Entry {
	out := make([]Entry, 0, len(inv.blobs)+len(inv.derived))
	for _, e := range inv.blobs {
		out = append(out, *e)
	}
	for _, e := range inv.derived {
		out = append(out, *e)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Kind != out[j].Kind {
			return out[i].Kind == KindBlob
		}
		return out[i].Path < out[j].Path
	})
	for i := range out {
		sort.Strings(out[i].Images)
	}
	return out
}
