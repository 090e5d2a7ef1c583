package resolve

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
)

// A mirror in the classic layout holds a version's one build in the
// directory the catalog calls unpinned (Ubuntu's release/) and no
// release-<serial>/ directories: a partial rsync of the Ubuntu tree, or an
// internal mirror that copies release/ only. Its build is read from there;
// its serial, when known, comes from the build-info file's "serial=" line.

// ErrUnpinned: the mirror holds only the unpinned directory and nothing
// says which build it is (see *UnpinnedError).
var ErrUnpinned = errors.New("build is unpinned")

// UnpinnedError says a version's build cannot be pinned: the mirror's
// listing has no build directory, only the unpinned one, and its build-info
// file is missing or names no serial. It matches ErrUnpinned and
// catalog.ErrNoSerials (each resolution takes what is published then).
type UnpinnedError struct {
	Spec         image.Spec
	IndexURL     string
	Unpinned     string
	BuildInfoURL string
	// Why the build info told nothing ("404 Not Found", "no serial= line").
	Why string
}

func (e *UnpinnedError) Error() string {
	info := "the catalog names no build-info file"
	if e.BuildInfoURL != "" {
		info = fmt.Sprintf("%s names no serial (%s)", e.BuildInfoURL, e.Why)
	}
	return fmt.Sprintf("%s %s %s: the mirror's %s holds only %s/ (the classic layout, no per-build directories) and %s, so its build is unpinned and cannot be chosen by serial",
		e.Spec.Distro, e.Spec.Version, e.Spec.Arch, e.IndexURL, e.Unpinned, info)
}

// Is makes errors.Is(err, ErrUnpinned) and errors.Is(err, catalog.ErrNoSerials) true.
func (e *UnpinnedError) Is(target error) bool {
	return target == ErrUnpinned || target == catalog.ErrNoSerials
}

// maxBuildInfo caps a build-info file (a few short lines in practice).
const maxBuildInfo = 64 << 10

// unpinnedSerial is the listing's fallback when it names no build
// directory: the one build in the unpinned directory, labelled with the
// serial its build-info file names; an *UnpinnedError when there is none.
// ok is false when the listing has no unpinned directory either.
func (r *Resolver) unpinnedSerial(ctx context.Context, src catalog.SerialSource, links []listedLink) (s Serial, ok bool, err error) {
	if src.Unpinned == "" {
		return Serial{}, false, nil
	}
	var date time.Time
	for _, l := range links {
		if dir, isDir := listedDir(l.Href); isDir && dir == src.Unpinned {
			ok, date = true, l.Date
		}
	}
	if !ok {
		return Serial{}, false, nil
	}
	serial, why, err := r.buildInfoSerial(ctx, src)
	if err != nil {
		return Serial{}, true, err
	}
	if serial == "" {
		return Serial{}, true, &Error{Spec: src.Spec, Op: OpSerials, URL: src.IndexURL, Err: &UnpinnedError{
			Spec: src.Spec, IndexURL: src.IndexURL, Unpinned: src.Unpinned, BuildInfoURL: src.BuildInfoURL, Why: why}}
	}
	if date.IsZero() {
		date = serialDate(serial)
	}
	return Serial{Serial: serial, Date: date, URL: src.UnpinnedURL, Unpinned: true}, true, nil
}

// buildInfoSerial reads the serial the unpinned directory's build-info file
// names: "" with the reason when the file is absent or names no valid
// serial; an error only when it could not be read for another cause.
func (r *Resolver) buildInfoSerial(ctx context.Context, src catalog.SerialSource) (serial, why string, err error) {
	if src.BuildInfoURL == "" {
		return "", "", nil
	}
	body, ferr := r.fetch(ctx, src.BuildInfoURL, maxBuildInfo, nil)
	switch {
	case ferr != nil && isNotFound(ferr.err):
		return "", ferr.err.Error(), nil
	case ferr != nil:
		return "", "", &Error{Spec: src.Spec, Op: OpSerials, URL: src.BuildInfoURL, Retryable: ferr.retryable, Err: ferr.err}
	}
	sc := bufio.NewScanner(bytes.NewReader(body))
	for sc.Scan() {
		v, found := strings.CutPrefix(strings.TrimSpace(sc.Text()), "serial=")
		if !found {
			continue
		}
		if v = strings.TrimSpace(v); !src.ValidSerial(v) {
			return "", fmt.Sprintf("serial=%s is not a %s serial", image.Printable(v), src.Spec.Distro), nil
		}
		return v, "", nil
	}
	return "", "no serial= line", nil
}

// resolveUnpinned resolves spec from the unpinned directory, spec.Serial
// (the build-info serial, or "") labelling the result. The directory is
// repointed at each publication, so the build-info serial is read again
// afterwards: a change means the manifests may mix two builds, and the
// resolution fails, retryably.
func (r *Resolver) resolveUnpinned(ctx context.Context, spec image.Spec) (catalog.Resolution, error) {
	plan, err := r.cat.PlanUnpinned(spec)
	if err != nil {
		return catalog.Resolution{}, &Error{Spec: spec, Op: OpPlan, Err: err}
	}
	res, err := r.resolvePlan(ctx, plan)
	if err != nil {
		return catalog.Resolution{}, err
	}
	res.Unpinned = spec.Serial == ""
	if spec.Serial == "" {
		return res, nil
	}
	src, err := r.cat.Serials(spec)
	if err != nil {
		return catalog.Resolution{}, &Error{Spec: spec, Op: OpPlan, Err: err}
	}
	now, _, err := r.buildInfoSerial(ctx, src)
	if err != nil {
		return catalog.Resolution{}, err
	}
	if now != spec.Serial {
		return catalog.Resolution{}, &Error{Spec: spec, Op: OpSerials, URL: src.BuildInfoURL, Retryable: true,
			Err: fmt.Errorf("%s was repointed from build %s to %s while it was read; try again", src.UnpinnedURL, spec.Serial, image.Printable(now))}
	}
	return res, nil
}
