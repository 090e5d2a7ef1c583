package resolve_test

import (
	"testing"

	"github.com/vmprep/vmprep/internal/resolve"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
)

// BenchmarkResolve measures a full Ubuntu resolution against the local
// mirror: two manifests, two detached signatures, verification and lookup.
func BenchmarkResolve(b *testing.B) {
	m := testmirror.New(b, testmirror.WithArches(image.ArchAMD64))
	cat, err := catalog.New(m.CatalogOptions()...)
	if err != nil {
		b.Fatal(err)
	}
	r := resolve.New(cat)
	spec := image.Spec{Distro: "ubuntu", Version: "24.04", Arch: "amd64"}
	for b.Loop() {
		if _, err := r.Resolve(b.Context(), spec); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPlan(b *testing.B) {
	cat, err := catalog.New()
	if err != nil {
		b.Fatal(err)
	}
	spec := image.Spec{Distro: "ubuntu", Version: "noble", Arch: "arm64"}
	for b.Loop() {
		if _, err := cat.Plan(spec); err != nil {
			b.Fatal(err)
		}
	}
}
