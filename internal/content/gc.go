package content

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/pkg/digest"
)

// GC defaults.
const (
	DefaultPartialMaxAge = 24 * time.Hour
	DefaultGCMinAge      = 15 * time.Minute
)

// GCOptions tunes GC. The zero value is a sensible real run.
type GCOptions struct {
	// DryRun reports what would be removed and removes nothing.
	DryRun bool
	// PartialMaxAge: partial ingest files and leftover temporaries untouched
	// for longer are removed (0: DefaultPartialMaxAge). An ingest file whose
	// download lock is held is never removed.
	PartialMaxAge time.Duration
	// MinAge: unreferenced blobs and derived files committed more recently
	// are kept, so that a worker between Commit and LinkImage/SaveResolution
	// does not lose its file (0: DefaultGCMinAge; negative: no grace).
	MinAge time.Duration
	// PurgeQuarantine also empties quarantine/.
	PurgeQuarantine bool
}

// GCItem is one file GC removed (or would remove).
type GCItem struct {
	Kind   string `json:"kind"` // blob, derived, partial, temp, link, quarantine, use
	Path   string `json:"path"`
	Size   int64  `json:"size"`
	Reason string `json:"reason"`
}

// GCReport says what GC did.
type GCReport struct {
	DryRun  bool     `json:"dry_run"`
	Removed []GCItem `json:"removed"`
	// Freed is the total size of Removed.
	Freed int64 `json:"freed"`
	// Kept counts blobs and derived files left in place.
	Kept int `json:"kept"`
	// Busy lists files left because someone held their lock.
	Busy []string `json:"busy,omitempty"`
	// Failed lists files GC meant to remove but could not (Reason says why).
	Failed []GCItem `json:"failed,omitempty"`
}

// GC removes blobs and derived files that refs (the layer above: image
// links, records, live uses) does not mark referenced, the files refs asks
// to drop (Inventory.Drop), stale partial downloads and temporaries, and
// orphaned stamps and aliases. It holds the publish lock exclusively (Commit
// and PutDerived hold it shared, see PublishLock), and each object's own
// lock while removing it, so it never deletes something being written.
func (s *Store) GC(ctx context.Context, opts GCOptions, refs Referrer) (GCReport, error) {
	if opts.PartialMaxAge <= 0 {
		opts.PartialMaxAge = DefaultPartialMaxAge
	}
	switch {
	case opts.MinAge == 0:
		opts.MinAge = DefaultGCMinAge
	case opts.MinAge < 0:
		opts.MinAge = 0
	}
	rep := GCReport{DryRun: opts.DryRun}
	// With the GC lock held exclusively no Commit or PutDerived is running,
	// so a temporary in derived/ is a killed producer's and can go at once
	// (a killed conversion may leave gigabytes). A dry run does not wait for
	// the lock; it only tries, to report what a real run would remove now.
	var writersIdle bool
	if !opts.DryRun {
		unlock, ok, err := s.fileLock(ctx, s.path(dirLocks, lockGCName), false, true)
		if err == nil && !ok {
			// A conversion can hold the shared lock for minutes: say why
			// nothing happens rather than look hung.
			s.log.Warn("store: gc: waiting for running commits and conversions to finish", "root", s.root)
			unlock, err = s.gcExclusive(ctx)
		}
		if err != nil {
			return rep, fmt.Errorf("store: gc: %w", err)
		}
		defer unlock()
		writersIdle = true
	} else if unlock, ok, err := s.fileLock(ctx, s.path(dirLocks, lockGCName), false, true); err == nil && ok {
		defer unlock()
		writersIdle = true
	}
	inv, err := s.scan(ctx)
	if err == nil {
		err = refs.References(ctx, inv)
	}
	if err != nil {
		return rep, fmt.Errorf("store: gc: %w", err)
	}
	now := time.Now()
	g := &gcRun{s: s, ctx: ctx, opts: opts, rep: &rep}

	for _, hex := range sortedKeys(inv.Blobs) {
		e := inv.Blobs[hex]
		if e.Referenced() || now.Sub(entryTime(e)) < opts.MinAge {
			rep.Kept++
			continue
		}
		g.removeLocked(lockBlob, hex, GCItem{Kind: "blob", Path: e.Path, Size: e.Size, Reason: "unreferenced"},
			s.blobStampPath(hex))
	}
	for _, name := range sortedKeys(inv.Derived) {
		e := inv.Derived[name]
		if e.Referenced() || now.Sub(entryTime(e)) < opts.MinAge {
			rep.Kept++
			continue
		}
		g.removeLocked(lockDerived, name, GCItem{Kind: "derived", Path: e.Path, Size: e.Size, Reason: "unreferenced"},
			s.derivedStampPath(name))
	}
	for _, it := range inv.Drop {
		g.remove(it)
	}
	for _, p := range inv.Temps {
		if age, size, ok := fileAge(p, now); ok && age >= opts.PartialMaxAge {
			g.remove(GCItem{Kind: "temp", Path: p, Size: size, Reason: fmt.Sprintf("leftover temporary, untouched for %s", age.Round(time.Second))})
		}
	}
	for _, p := range inv.derivedJunk {
		age, size, ok := fileAge(p, now)
		switch {
		case ok && writersIdle:
			g.remove(GCItem{Kind: "temp", Path: p, Size: size, Reason: "leftover of an interrupted derivation (no producer is running)"})
		case ok && age >= opts.PartialMaxAge:
			g.remove(GCItem{Kind: "temp", Path: p, Size: size, Reason: fmt.Sprintf("leftover temporary, untouched for %s", age.Round(time.Second))})
		}
	}
	if err := g.partials(now); err != nil {
		return rep, err
	}
	if err := g.orphans(); err != nil {
		return rep, err
	}
	if opts.PurgeQuarantine {
		ents, err := os.ReadDir(s.path(dirQuarantine))
		if err != nil {
			return rep, fmt.Errorf("store: gc: %w", err)
		}
		for _, de := range ents {
			p := s.path(dirQuarantine, de.Name())
			_, size, _ := fileAge(p, now)
			g.remove(GCItem{Kind: "quarantine", Path: p, Size: size, Reason: "quarantine purged"})
		}
	}
	return rep, ctx.Err()
}

type gcRun struct {
	s    *Store
	ctx  context.Context
	opts GCOptions
	rep  *GCReport
}

func entryTime(e *Entry) time.Time {
	if !e.CommittedAt.IsZero() {
		return e.CommittedAt
	}
	if fi, err := os.Lstat(e.Path); err == nil {
		return fi.ModTime()
	}
	return time.Time{}
}

func fileAge(p string, now time.Time) (time.Duration, int64, bool) {
	fi, err := os.Lstat(p)
	if err != nil {
		return 0, 0, false
	}
	return now.Sub(fi.ModTime()), fi.Size(), true
}

// remove deletes one file (unless dry-run) and records it.
func (g *gcRun) remove(it GCItem) bool {
	if g.ctx.Err() != nil {
		return false
	}
	if !g.opts.DryRun {
		if err := os.Remove(it.Path); err != nil && !notExist(err) {
			g.s.log.Warn("store: gc: cannot remove", "path", it.Path, "err", err)
			it.Reason = fmt.Sprintf("%s; cannot remove: %v", it.Reason, err)
			g.rep.Failed = append(g.rep.Failed, it)
			return false
		}
	}
	g.rep.Removed = append(g.rep.Removed, it)
	g.rep.Freed += it.Size
	return true
}

// removeLocked removes a blob or derived file (and its stamp) under its own
// lock, skipping it if the lock is busy; the lock file goes too, while held.
func (g *gcRun) removeLocked(ns, name string, it GCItem, stampPath string) {
	unlock, ok, err := g.s.lock(g.ctx, ns, name, true)
	if err != nil || !ok {
		g.rep.Busy = append(g.rep.Busy, it.Path)
		return
	}
	defer unlock()
	if g.remove(it) && !g.opts.DryRun {
		_ = os.Remove(stampPath)
		_ = os.Remove(g.s.path(dirLocks, ns, name))
	}
}

// partials removes stale ingest files: grouped by download ("<alg>-<hex>"
// and its ".meta"), removed when the group's newest file is older than
// PartialMaxAge and the download lock (the digest string) can be taken.
func (g *gcRun) partials(now time.Time) error {
	dir := g.s.path(dirIngest)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("store: gc: %w", err)
	}
	groups := map[string][]string{}
	var order []string
	for _, de := range ents {
		key, _, _ := strings.Cut(de.Name(), ".")
		if _, seen := groups[key]; !seen {
			order = append(order, key)
		}
		groups[key] = append(groups[key], filepath.Join(dir, de.Name()))
	}
	for _, key := range order {
		files := groups[key]
		youngest := time.Duration(1<<63 - 1)
		var sizes []int64
		for _, p := range files {
			age, size, ok := fileAge(p, now)
			if ok && age < youngest {
				youngest = age
			}
			sizes = append(sizes, size)
		}
		if youngest < g.opts.PartialMaxAge {
			continue
		}
		var unlock func() error
		// The lock is tried in a dry run too, so that its report is accurate.
		if alg, hex, ok := strings.Cut(key, "-"); ok {
			if d, err := digest.New(digest.Algorithm(alg), hex); err == nil {
				u, got, err := g.s.lock(g.ctx, lockUser, d.String(), true)
				if err != nil || !got {
					g.rep.Busy = append(g.rep.Busy, files...)
					continue
				}
				unlock = u
			}
		}
		for i, p := range files {
			g.remove(GCItem{Kind: "partial", Path: p, Size: sizes[i],
				Reason: fmt.Sprintf("partial download untouched for %s", youngest.Round(time.Second))})
		}
		if unlock != nil {
			unlock()
		}
	}
	return nil
}

// orphans removes stamps and aliases whose file is gone, and lock files not
// held by anyone whose object is gone (removed while held, see fileLock).
func (g *gcRun) orphans() error {
	s := g.s
	check := func(dir string, exists func(name string) bool, kind string) error {
		ents, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("store: gc: %w", err)
		}
		for _, de := range ents {
			if atomicfile.IsTemp(de.Name()) || exists(de.Name()) {
				continue
			}
			g.remove(GCItem{Kind: kind, Path: filepath.Join(dir, de.Name()), Reason: "orphaned " + kind})
		}
		return nil
	}
	blobExists := func(hex string) bool { _, err := os.Lstat(s.blobPath(hex)); return err == nil }
	derivedExists := func(name string) bool { _, err := os.Lstat(s.path(dirDerived, name)); return err == nil }
	if err := check(s.path(dirStamps, "blobs"), blobExists, "stamp"); err != nil {
		return err
	}
	if err := check(s.path(dirStamps, "derived"), derivedExists, "stamp"); err != nil {
		return err
	}
	aliasDir := s.path(dirIndex, string(digest.SHA512))
	if err := check(aliasDir, func(name string) bool {
		b, err := ReadCapped(filepath.Join(aliasDir, name), 256)
		return err == nil && blobExists(strings.TrimSpace(string(b)))
	}, "alias"); err != nil {
		return err
	}
	if g.opts.DryRun {
		return nil
	}
	// Lock files are not reported: they are empty and say nothing to a user.
	for _, l := range []struct {
		ns     string
		exists func(string) bool
	}{
		{lockUser, func(name string) bool { return false }},
		{lockBlob, blobExists},
		{lockDerived, derivedExists},
	} {
		ents, err := os.ReadDir(s.path(dirLocks, l.ns))
		if err != nil {
			return fmt.Errorf("store: gc: %w", err)
		}
		for _, de := range ents {
			if l.exists(de.Name()) {
				continue
			}
			unlock, ok, err := s.lock(g.ctx, l.ns, de.Name(), true)
			if err != nil || !ok {
				continue
			}
			_ = os.Remove(s.path(dirLocks, l.ns, de.Name()))
			unlock()
		}
	}
	return nil
}
