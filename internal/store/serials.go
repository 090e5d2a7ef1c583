package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
)

// Builds of catalogs with serials (Ubuntu's release-<serial>/) are recorded
// per serial and per trust roots (catalog.TrustRoots.ID: keyring, catalog
// entry, mirror), beside the records/ of the latest resolution:
//
//	serials/<distro>/<version>/<arch>/<roots>/<serial>.json   verified resolution of that build
//	serials/<distro>/<version>/<arch>/<roots>/newest           SerialMark: the newest serial verified
//
// A build's directory never changes, so its record never goes stale: a
// request pinned to it under the same roots is answered from here, without
// the network. The mark only moves forward; a resolution that finds only
// older serials is a rollback. Both are per roots: a build a test mirror's
// throwaway key signed answers no request under the distribution's keys,
// and a test mirror's far-future serial does not make every real build look
// like a rollback. Records from before roots were recorded (files directly
// in <arch>/) are ignored. Per-serial records do not keep blobs from GC (records/ and the
// images/ links do): an old pinned build GC removed is fetched again.
// Callers key everything by the canonical version (a codename's number).

const markName = "newest"

// SerialMark is the newest serial verified for an image.
type SerialMark struct {
	Serial     string    `json:"serial"`
	VerifiedAt time.Time `json:"verified_at"`
}

// imageSerialsDir validates spec and returns the elements of its serials/
// directory, which holds one directory per trust roots.
func imageSerialsDir(spec image.Spec) ([]string, error) {
	p, err := specPath(spec)
	if err != nil {
		return nil, err
	}
	return append([]string{dirSerials}, p...), nil
}

// serialDir validates spec and returns the elements of its serials/
// directory under roots.
func serialDir(spec image.Spec, roots catalog.TrustRoots) ([]string, error) {
	dir, err := imageSerialsDir(spec)
	if err != nil {
		return nil, err
	}
	return append(dir, roots.ID()), nil
}

func checkSerial(serial string) error {
	if err := image.CheckSerial(serial); err != nil {
		return fmt.Errorf("store: %w: %w", content.ErrInvalidName, err)
	}
	return nil
}

// serialRecordPath returns the path of spec's per-serial record under roots.
func (s *Store) serialRecordPath(spec image.Spec, roots catalog.TrustRoots) ([]string, string, error) {
	dir, err := serialDir(spec, roots)
	if err != nil {
		return nil, "", err
	}
	if err := checkSerial(spec.Serial); err != nil {
		return nil, "", err
	}
	return dir, s.path(append(dir, spec.Serial+".json")...), nil
}

// SaveSerialResolution records a verified resolution of one build (its
// Spec.Serial and Roots must be set), atomically, under its roots.
func (s *Store) SaveSerialResolution(ctx context.Context, r catalog.Resolution) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if r.Roots == nil {
		return fmt.Errorf("store: record of %s: the resolution names no trust roots", r.Spec)
	}
	dir, path, err := s.serialRecordPath(r.Spec, *r.Roots)
	if err != nil {
		return err
	}
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("store: record %s: %w", path, err)
	}
	if _, err := s.MkdirInRoot(dir...); err != nil {
		return fmt.Errorf("store: record %s: %w", path, err)
	}
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("store: record: %w", err)
	}
	return nil
}

// LoadSerialResolution returns the recorded resolution of the build
// spec.Serial names, resolved under roots; a *OtherRootsError
// (ErrOtherRoots) when only other roots recorded it; or content.ErrNotFound.
func (s *Store) LoadSerialResolution(ctx context.Context, spec image.Spec, roots catalog.TrustRoots) (catalog.Resolution, error) {
	if err := ctx.Err(); err != nil {
		return catalog.Resolution{}, err
	}
	_, path, err := s.serialRecordPath(spec, roots)
	if err != nil {
		return catalog.Resolution{}, err
	}
	r, err := s.readSerialRecord(path, spec)
	if errors.Is(err, content.ErrNotFound) {
		if other, ok := s.otherRootsSerial(spec, roots); ok {
			return catalog.Resolution{}, &OtherRootsError{Spec: spec, Recorded: other.Roots, Now: roots}
		}
	}
	if err != nil {
		return catalog.Resolution{}, err
	}
	if err := checkRoots(r, roots); err != nil {
		return catalog.Resolution{}, err
	}
	return r, nil
}

func (s *Store) readSerialRecord(path string, spec image.Spec) (catalog.Resolution, error) {
	r, err := readRecord(path)
	if err != nil {
		return catalog.Resolution{}, err
	}
	if !strings.EqualFold(r.Spec.Distro, spec.Distro) || r.Spec.Version != spec.Version || r.Spec.Arch != spec.Arch || r.Spec.Serial != spec.Serial {
		return catalog.Resolution{}, fmt.Errorf("store: record %s: holds %s, not the requested build", path, r.Spec)
	}
	return r, nil
}

// otherRootsSerial finds a record of spec's build under roots other than
// roots, so that a request that cannot use it can say why.
func (s *Store) otherRootsSerial(spec image.Spec, roots catalog.TrustRoots) (catalog.Resolution, bool) {
	dir, err := imageSerialsDir(spec)
	if err != nil || checkSerial(spec.Serial) != nil {
		return catalog.Resolution{}, false
	}
	ents, err := os.ReadDir(s.path(dir...))
	if err != nil {
		return catalog.Resolution{}, false
	}
	for _, de := range ents {
		if !de.IsDir() || de.Name() == roots.ID() || content.ValidComponent("roots", de.Name()) != nil {
			continue
		}
		if r, err := s.readSerialRecord(s.path(append(dir, de.Name(), spec.Serial+".json")...), spec); err == nil {
			return r, true
		}
	}
	return catalog.Resolution{}, false
}

// RecordedSerials lists the serials of spec's image that have a record
// under roots, newest first (spec.Serial is ignored).
func (s *Store) RecordedSerials(ctx context.Context, spec image.Spec, roots catalog.TrustRoots) ([]string, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir, err := serialDir(spec, roots)
	if err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(s.path(dir...))
	if notExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	var out []string
	for _, de := range ents {
		serial, ok := strings.CutSuffix(de.Name(), ".json")
		if ok && de.Type().IsRegular() && !atomicfile.IsTemp(de.Name()) && image.CheckSerial(serial) == nil {
			out = append(out, serial)
		}
	}
	slices.SortFunc(out, func(a, b string) int { return image.CompareNatural(b, a) })
	return out, nil
}

// NewestSerial returns the newest serial verified for spec's image under
// roots, or content.ErrNotFound before the first.
func (s *Store) NewestSerial(ctx context.Context, spec image.Spec, roots catalog.TrustRoots) (SerialMark, error) {
	if err := ctx.Err(); err != nil {
		return SerialMark{}, err
	}
	dir, err := serialDir(spec, roots)
	if err != nil {
		return SerialMark{}, err
	}
	return s.readMark(s.path(append(dir, markName)...))
}

func (s *Store) readMark(path string) (SerialMark, error) {
	b, err := content.ReadCapped(path, 4<<10)
	if notExist(err) {
		return SerialMark{}, fmt.Errorf("store: serial mark %s: %w", path, content.ErrNotFound)
	}
	if err != nil {
		return SerialMark{}, fmt.Errorf("store: serial mark: %w", err)
	}
	var m SerialMark
	if err := json.Unmarshal(b, &m); err != nil {
		return SerialMark{}, fmt.Errorf("store: serial mark %s: %w", path, err)
	}
	if err := checkSerial(m.Serial); err != nil {
		return SerialMark{}, fmt.Errorf("store: serial mark %s: %w", path, err)
	}
	return m, nil
}

// RaiseNewestSerial records serial, verified at at under roots, as the
// newest of spec's image under roots unless a newer one
// (image.CompareNatural) is recorded already, and returns the mark in force
// afterwards. Concurrent callers, in this process or others sharing the
// store, never lower it.
func (s *Store) RaiseNewestSerial(ctx context.Context, spec image.Spec, roots catalog.TrustRoots, serial string, at time.Time) (SerialMark, error) {
	dir, err := serialDir(spec, roots)
	if err != nil {
		return SerialMark{}, err
	}
	if err := checkSerial(serial); err != nil {
		return SerialMark{}, err
	}
	unlock, err := s.Lock(ctx, strings.Join(append([]string{"serial-mark"}, dir[1:]...), "@"))
	if err != nil {
		return SerialMark{}, fmt.Errorf("store: serial mark: %w", err)
	}
	defer unlock()
	path := s.path(append(dir, markName)...)
	cur, err := s.readMark(path)
	switch {
	case err == nil && image.CompareNatural(cur.Serial, serial) >= 0:
		return cur, nil
	case err != nil && !errors.Is(err, content.ErrNotFound):
		// A damaged mark is replaced: losing it only weakens the rollback
		// check until this write, while keeping it would fail every request.
		s.Logger().Warn("store: replacing an unreadable serial mark", "path", path, "err", err)
	}
	m := SerialMark{Serial: serial, VerifiedAt: at.UTC()}
	b, err := json.Marshal(m)
	if err != nil {
		return SerialMark{}, err
	}
	if _, err := s.MkdirInRoot(dir...); err != nil {
		return SerialMark{}, fmt.Errorf("store: serial mark %s: %w", path, err)
	}
	if err := atomicfile.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return SerialMark{}, fmt.Errorf("store: serial mark: %w", err)
	}
	return m, nil
}

// ViewSerialName is the file in an images/<distro>/<version>/<arch>/ view
// that names the build its links point at.
const ViewSerialName = "serial"

// SetViewSerial writes spec.Serial (and a newline) to the view's serial
// file, atomically, after its links were replaced; an image without a
// serial has the file removed, so it never names a build the links left.
func (s *Store) SetViewSerial(spec image.Spec) error {
	p, err := specPath(spec)
	if err != nil {
		return err
	}
	dir := append([]string{dirImages}, p...)
	path := s.path(append(dir, ViewSerialName)...)
	if spec.Serial == "" {
		if err := os.Remove(path); err != nil && !notExist(err) {
			return fmt.Errorf("store: %w", err)
		}
		return nil
	}
	if err := checkSerial(spec.Serial); err != nil {
		return err
	}
	if b, err := content.ReadCapped(path, 128); err == nil && string(b) == spec.Serial+"\n" {
		return nil // already names it: a warm request writes nothing
	}
	if _, err := s.MkdirInRoot(dir...); err != nil {
		return fmt.Errorf("store: view serial %s: %w", path, err)
	}
	if err := atomicfile.WriteFile(path, []byte(spec.Serial+"\n"), 0o444); err != nil {
		return fmt.Errorf("store: view serial: %w", err)
	}
	return nil
}

// ViewRootsName is the file in an images/<distro>/<version>/<arch>/ view
// that names the trust roots (catalog.TrustRoots, JSON) of the build its
// links point at, so that whoever boots from the view can tell a build a
// test key or another mirror vouched for from one of the distribution's.
const ViewRootsName = "roots"

// SetViewRoots writes roots to the view's roots file, atomically, after its
// links were replaced; nil roots (unknown) remove the file, so it never
// names roots the links left.
func (s *Store) SetViewRoots(spec image.Spec, roots *catalog.TrustRoots) error {
	p, err := specPath(spec)
	if err != nil {
		return err
	}
	dir := append([]string{dirImages}, p...)
	path := s.path(append(dir, ViewRootsName)...)
	if roots == nil {
		if err := os.Remove(path); err != nil && !notExist(err) {
			return fmt.Errorf("store: %w", err)
		}
		return nil
	}
	b, err := json.MarshalIndent(roots, "", "  ")
	if err != nil {
		return fmt.Errorf("store: view roots: %w", err)
	}
	b = append(b, '\n')
	if cur, err := content.ReadCapped(path, 64<<10); err == nil && string(cur) == string(b) {
		return nil // already names them: a warm request writes nothing
	}
	if _, err := s.MkdirInRoot(dir...); err != nil {
		return fmt.Errorf("store: view roots %s: %w", path, err)
	}
	if err := atomicfile.WriteFile(path, b, 0o444); err != nil {
		return fmt.Errorf("store: view roots: %w", err)
	}
	return nil
}

// RecordedImages lists the images of distro that have a latest resolution
// in records/ (distro, version and arch; the serial is the record's),
// whatever trust roots it was resolved under.
func (s *Store) RecordedImages(ctx context.Context, distro string) ([]image.Spec, error) {
	d := strings.ToLower(distro)
	if err := content.ValidComponent("distro", d); err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	versions, err := os.ReadDir(s.path(dirRecords, d))
	if notExist(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: %w", err)
	}
	var out []image.Spec
	for _, v := range versions {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if !v.IsDir() || content.ValidComponent("version", v.Name()) != nil {
			continue
		}
		arches, err := os.ReadDir(s.path(dirRecords, d, v.Name()))
		if err != nil {
			continue
		}
		for _, a := range arches {
			arch, ok := strings.CutSuffix(a.Name(), ".json")
			if !ok || !a.Type().IsRegular() || atomicfile.IsTemp(a.Name()) || content.ValidComponent("arch", arch) != nil {
				continue
			}
			spec := image.Spec{Distro: d, Version: v.Name(), Arch: image.Arch(arch)}
			if r, err := s.loadAnyResolution(ctx, spec); err == nil {
				out = append(out, r.Spec)
			}
		}
	}
	return out, nil
}
