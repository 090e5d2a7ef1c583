package resolve_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/resolve"
)

// TestUnpublishedVersionListsThePublished (issue 16, item 10): a version
// the catalog knows but the mirror does not publish failed with a bare
// "HTTP 404 Not Found"; it now says the version is not published there and
// lists the versions that are, as an unpublished serial lists the serials.
func TestUnpublishedVersionListsThePublished(t *testing.T) {
	t.Parallel()
	m := newMirror(t, testmirror.WithArches(catalog.ArchAMD64), testmirror.WithUbuntu("24.04", "22.04"))
	r := newResolver(t, m, []catalog.Option{catalog.WithKeyring(m.Keyring())})
	_, err := r.Resolve(t.Context(), catalog.ImageSpec{Distro: "ubuntu", Version: "25.04", Arch: catalog.ArchAMD64})
	var uv *resolve.UnpublishedVersionError
	if !errors.As(err, &uv) || !errors.Is(err, resolve.ErrNotFound) || resolve.IsRetryable(err) {
		t.Fatalf("Resolve(ubuntu 25.04) = %v; want a permanent *UnpublishedVersionError matching ErrNotFound", err)
	}
	for _, want := range []string{"ubuntu 25.04 is not published at " + m.URL + "releases/25.04/", "HTTP 404", "published there: 24.04, 22.04"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not say %q:\n%v", want, err)
		}
	}
}
