package content

import (
	"context"
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
	// Images, Records and Uses are set by the layer above (its Referrer).
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

// UseRef is a live use (see internal/store's Use) as listed with a stored file.
type UseRef struct {
	Kind   string `json:"kind"`
	Holder string `json:"holder"`
	Method string `json:"method"`
}

// Inventory is one pass over the content store's directories, which the
// layer above completes with what refers to each entry (see Referrer).
type Inventory struct {
	Blobs   map[string]*Entry // by SHA-256 hex
	Derived map[string]*Entry // by file name
	// Temps are leftovers of interrupted atomic writes; GC removes them once
	// stale. The layer above adds those of its own directories.
	Temps []string
	// Drop are files of the layer above that GC removes as they are (a
	// dangling link, the record of a dead use).
	Drop []GCItem

	// aliasTo maps an alias file path to the SHA-256 hex it names.
	aliasTo map[string]string
	// sha512 hex → SHA-256 hex
	bySHA512 map[string]string
	// junk in derived/ that is not a derived key (a crashed producer's
	// temporary, or debris)
	derivedJunk []string
}

// Referrer is the layer above the content store: it marks in an Inventory
// the entries it keeps (Entry.Images, Records, Uses) and adds its own
// debris (Inventory.Temps, Drop). List and GC call it after their scan.
type Referrer interface {
	References(ctx context.Context, inv *Inventory) error
}

func (s *Store) scan(ctx context.Context) (*Inventory, error) {
	inv := &Inventory{
		Blobs:    map[string]*Entry{},
		Derived:  map[string]*Entry{},
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
			inv.Temps = append(inv.Temps, p)
			continue
		}
		d, err := digest.New(digest.SHA256, name)
		if err != nil || d.Hex != name || !de.Type().IsRegular() {
			inv.Temps = append(inv.Temps, p) // not ours: treat as debris
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
		inv.Blobs[name] = e
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
		k, ok := ParseDerivedName(name)
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
		inv.Derived[name] = e
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
			inv.Temps = append(inv.Temps, p)
			continue
		}
		b, err := ReadCapped(p, 256)
		if err != nil {
			continue
		}
		target := strings.TrimSpace(string(b))
		inv.aliasTo[p] = target
		if d, err := digest.New(digest.SHA512, name); err == nil && d.Hex == name {
			inv.bySHA512[name] = target
			if e := inv.Blobs[target]; e != nil {
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
				inv.Temps = append(inv.Temps, filepath.Join(dir, de.Name()))
			}
		}
	}

	return inv, nil
}

// SHA256Of maps a digest (one a record names) to the SHA-256 hex of its
// blob, or "" if no blob is known by it.
func (inv *Inventory) SHA256Of(d digest.Digest) string {
	switch d.Algorithm {
	case digest.SHA256:
		return d.Hex
	case digest.SHA512:
		return inv.bySHA512[d.Hex]
	}
	return ""
}

// List returns every blob and derived file with its size and what refers to
// it (as refs, the layer above, says). It reads no content.
func (s *Store) List(ctx context.Context, refs Referrer) ([]Entry, error) {
	inv, err := s.scan(ctx)
	if err != nil {
		return nil, err
	}
	if err := refs.References(ctx, inv); err != nil {
		return nil, err
	}
	return inv.entries(), nil
}

func (inv *Inventory) entries() []Entry {
	out := make([]Entry, 0, len(inv.Blobs)+len(inv.Derived))
	for _, e := range inv.Blobs {
		out = append(out, *e)
	}
	for _, e := range inv.Derived {
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
