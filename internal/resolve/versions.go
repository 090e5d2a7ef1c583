package resolve

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
)

// UnpublishedVersionError is a version the catalog knows that the mirror
// does not publish: its build directory answered 404. Published lists the
// versions its parent directory's listing offers, newest first (empty when
// that listing could not be read), so that the person sees what there is,
// as an unpublished serial does (UnknownSerialError). It wraps the 404, so
// errors.Is(err, ErrNotFound) holds.
type UnpublishedVersionError struct {
	Spec      image.Spec
	IndexURL  string
	Published []string
	Err       error
}

func (e *UnpublishedVersionError) Error() string {
	msg := fmt.Sprintf("%s %s is not published at %s (%v)", e.Spec.Distro, image.Printable(e.Spec.Version), e.IndexURL, e.Err)
	if len(e.Published) == 0 {
		return msg
	}
	list, more := e.Published, ""
	if len(list) > maxNamedSerials {
		more = fmt.Sprintf(" and %d older", len(list)-maxNamedSerials)
		list = list[:maxNamedSerials]
	}
	return msg + "; published there: " + strings.Join(list, ", ") + more
}

func (e *UnpublishedVersionError) Unwrap() error { return e.Err }

// explainUnpublishedVersion turns a 404 for a version's build listing into
// an *UnpublishedVersionError naming the versions published beside it (the
// parent directory's subdirectories the catalog knows as versions of the
// distro, codenames counted once); any other error is returned as it is.
func (r *Resolver) explainUnpublishedVersion(ctx context.Context, src catalog.SerialSource, err error) error {
	if !errors.Is(err, ErrNotFound) {
		return err
	}
	out := &UnpublishedVersionError{Spec: src.Spec, IndexURL: src.IndexURL, Err: err}
	parent := strings.TrimSuffix(src.IndexURL, "/")
	i := strings.LastIndex(parent, "/")
	if i < 0 {
		return out
	}
	parent = parent[:i+1]
	body, ferr := r.fetchListing(ctx, parent)
	if ferr != nil {
		return out
	}
	seen := map[string]bool{}
	for _, l := range parseListing(body) {
		dir, ok := listedDir(l.Href)
		if !ok {
			continue
		}
		s, cerr := r.cat.Canonical(image.Spec{Distro: src.Spec.Distro, Version: dir, Arch: src.Spec.Arch})
		if cerr != nil || seen[s.Version] || s.Version == src.Spec.Version {
			continue
		}
		seen[s.Version] = true
		out.Published = append(out.Published, s.Version)
	}
	slices.SortFunc(out.Published, func(a, b string) int { return image.CompareNatural(b, a) })
	return out
}
