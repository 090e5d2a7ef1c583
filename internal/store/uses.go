package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/qcow2"
)

// dirUses holds one record per use of a stored file from outside the store
// (uses/<hash of the holder>.json).
const dirUses = "uses"

// Use records that something outside the store depends on a stored file —
// today a clone of a disk (`vmprep clone`): a qcow2 overlay naming it as its
// backing file, or a reflink/clonefile sharing its blocks. GC keeps a file
// while one of its uses is live, and drops the records of dead ones.
//
// The layer is deliberately generic — a stored file, a holder whose
// existence proves the use, a kind — so that other users of the cache can
// pin what they need the same way: fleet selections (a host keeps the
// builds its clones use) are meant to record and list their uses here
// rather than invent a second mechanism.
type Use struct {
	// Kind says what uses the file ("clone").
	Kind string `json:"kind"`
	// Base is the used file, relative to the store root
	// (blobs/sha256/<hex> or derived/<name>).
	Base string `json:"base"`
	// Holder is the absolute path of what uses it (the clone).
	Holder string `json:"holder"`
	// Method is how the holder uses it (reflink, clonefile, overlay, copy).
	Method string `json:"method"`
	// Pins says whether the use keeps Base: false for a copy, which shares
	// nothing but is recorded so that `cache ls` can list it.
	Pins bool `json:"pins"`
	// Backing: the holder is a qcow2 overlay whose backing file must still
	// be Base for the use to be live (one rebased elsewhere no longer needs it).
	Backing bool `json:"backing,omitempty"`
	// Request, if set, names what asked for the holder (a prepare
	// request's key): a redelivered request finds its own clone by it.
	Request string `json:"request,omitempty"`
	// Device and Inode identify the holder's file when recorded: a new file
	// put at the same path later does not keep Base (unless the file system
	// gave it the same inode number, after the old one was removed).
	Device  uint64    `json:"device,omitempty"`
	Inode   uint64    `json:"inode,omitempty"`
	Created time.Time `json:"created"`
}

// UseStatus is a recorded Use and whether it is live now.
type UseStatus struct {
	Use
	// BasePath is Base's absolute path.
	BasePath string `json:"base_path"`
	Live     bool   `json:"live"`
	// Stale: the holder is gone (or is another file, or no longer names
	// Base): GC removes the record.
	Stale bool `json:"stale,omitempty"`
	// Why says why a use is not live (or does not pin).
	Why string `json:"why,omitempty"`
	// Record is the record file's path.
	Record string `json:"record"`
}

// StoredFile returns the path of a stored blob or derived file relative to
// the root, for path (an image link, or the file itself), or an error saying
// that path is not a file of this store.
func (s *Store) StoredFile(path string) (string, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	if real, err = filepath.Abs(real); err != nil {
		return "", fmt.Errorf("store: %s: %w", path, err)
	}
	root, err := filepath.EvalSymlinks(s.Root())
	if err != nil {
		return "", fmt.Errorf("store: %w", err)
	}
	rel, err := filepath.Rel(root, real)
	if err == nil {
		rel = filepath.ToSlash(rel)
		dir, name := filepath.ToSlash(filepath.Dir(rel)), filepath.Base(rel)
		_, derived := content.ParseDerivedName(name)
		if (dir == content.DirBlobs+"/sha256" && !atomicfile.IsTemp(name)) || (dir == content.DirDerived && derived) {
			return rel, nil
		}
	}
	return "", fmt.Errorf("store: %s is not a disk in the cache %s (want a file under %s/ or %s/, or an images/ link to one)", path, s.Root(), content.DirBlobs, content.DirDerived)
}

// RecordUse publishes u (Base relative to the root, Holder absolute; the
// holder's file identity is filled in). produce, if not nil, runs first with
// the GC lock held shared, so that GC cannot remove Base between the
// creation of the holder (the clone) and its record; it may complete u
// (the method it used).
func (s *Store) RecordUse(ctx context.Context, u Use, produce func(u *Use) error) error {
	if _, err := s.StoredFile(s.path(filepath.FromSlash(u.Base))); err != nil {
		return err
	}
	if !filepath.IsAbs(u.Holder) {
		return fmt.Errorf("store: use of %s: holder %q is not an absolute path", u.Base, u.Holder)
	}
	if err := content.ValidComponent("use kind", u.Kind); err != nil {
		return fmt.Errorf("store: %w", err)
	}
	unlock, err := s.PublishLock(ctx)
	if err != nil {
		return fmt.Errorf("store: use of %s: %w", u.Base, err)
	}
	defer unlock()
	if produce != nil {
		if err := produce(&u); err != nil {
			return err
		}
	}
	fi, err := os.Stat(u.Holder)
	if err != nil {
		return fmt.Errorf("store: use of %s: %w", u.Base, err)
	}
	u.Device, u.Inode = content.FileIdentity(fi)
	if u.Created.IsZero() {
		u.Created = time.Now().UTC()
	}
	dir, err := s.MkdirInRoot(dirUses)
	if err != nil {
		return fmt.Errorf("store: use of %s: %w", u.Base, err)
	}
	b, err := json.MarshalIndent(u, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.WriteFile(filepath.Join(dir, useName(u.Kind, u.Holder)), append(b, '\n'), 0o644)
}

// useName is the record's file name: one record per kind and holder, so
// that a clone made again at the same path replaces its record.
func useName(kind, holder string) string {
	h := sha256.Sum256([]byte(kind + "\x00" + holder))
	return kind + "-" + hex.EncodeToString(h[:16]) + ".json"
}

// Uses lists the recorded uses, each checked for liveness, sorted by base
// then holder.
func (s *Store) Uses(ctx context.Context) ([]UseStatus, error) {
	dir := s.path(dirUses)
	var out []UseStatus
	err := filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if errors.Is(err, fs.ErrNotExist) && p == dir {
			return fs.SkipAll
		}
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if de.IsDir() || atomicfile.IsTemp(de.Name()) || !strings.HasSuffix(de.Name(), ".json") {
			return nil
		}
		us := UseStatus{Record: p}
		b, err := content.ReadCapped(p, 64<<10)
		if err == nil {
			err = json.Unmarshal(b, &us.Use)
		}
		if err != nil {
			s.Logger().Warn("store: unreadable use record", "path", p, "err", err)
			us.Why = fmt.Sprintf("unreadable record: %v", err)
			us.Stale = true
			out = append(out, us)
			return nil
		}
		us.BasePath = s.path(filepath.FromSlash(us.Base))
		us.Live, us.Stale, us.Why = s.useLive(us.Use)
		out = append(out, us)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: uses: %w", err)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Base != out[j].Base {
			return out[i].Base < out[j].Base
		}
		return out[i].Holder < out[j].Holder
	})
	return out, nil
}

// useLive reports whether u still keeps its base, whether its record is
// stale (its holder gone), and why not live.
func (s *Store) useLive(u Use) (live, stale bool, why string) {
	if !filepath.IsAbs(u.Holder) || strings.Contains(u.Base, "..") {
		return false, true, "malformed record"
	}
	fi, err := os.Stat(u.Holder)
	if err != nil {
		return false, true, fmt.Sprintf("%s is gone", u.Holder)
	}
	if _, err := os.Lstat(s.path(filepath.FromSlash(u.Base))); errors.Is(err, fs.ErrNotExist) {
		return false, true, fmt.Sprintf("its base %s is gone", u.Base)
	}
	if dev, ino := content.FileIdentity(fi); u.Inode != 0 && (ino != u.Inode || dev != u.Device) {
		return false, true, fmt.Sprintf("%s is another file now", u.Holder)
	}
	if !u.Pins {
		return false, false, fmt.Sprintf("a %s shares nothing with its base", u.Method)
	}
	if u.Backing {
		f, err := os.Open(u.Holder)
		if err != nil {
			return true, false, "" // unreadable: keep the base rather than guess
		}
		defer f.Close()
		name, _, ok, err := qcow2.Backing(f)
		if err != nil {
			return true, false, ""
		}
		base := s.path(filepath.FromSlash(u.Base))
		if !ok || !sameFile(name, base) {
			return false, true, fmt.Sprintf("%s no longer names %s as its backing file", u.Holder, base)
		}
	}
	return true, false, ""
}

// scanUses attaches live uses to the entries they keep, and notes the
// records of dead ones for GC.
func (s *Store) scanUses(ctx context.Context, inv *content.Inventory) error {
	uses, err := s.Uses(ctx)
	if err != nil {
		return err
	}
	for _, u := range uses {
		if u.Stale {
			inv.Drop = append(inv.Drop, content.GCItem{Kind: "use", Path: u.Record, Reason: "stale use record: " + u.Why})
			continue
		}
		if !u.Live {
			continue
		}
		var e *content.Entry
		dir, name := filepath.ToSlash(filepath.Dir(u.Base)), filepath.Base(u.Base)
		switch dir {
		case content.DirBlobs + "/sha256":
			e = inv.Blobs[name]
		case content.DirDerived:
			e = inv.Derived[name]
		}
		if e != nil {
			e.Uses = append(e.Uses, content.UseRef{Kind: u.Kind, Holder: u.Holder, Method: u.Method})
		}
	}
	return nil
}

// sameFile reports whether paths a and b name the same file (the store
// root may be reached through a symlink).
func sameFile(a, b string) bool {
	if a == b {
		return true
	}
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}
