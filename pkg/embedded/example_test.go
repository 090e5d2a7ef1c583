package embedded_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/embedded"
	"github.com/vmprep/vmprep/pkg/image"
)

// A backend's test starts a whole deployment in its own process and asks it
// for an image through the client. Here the catalog points at a local mirror
// in Ubuntu's layout, signed by a throwaway key, standing in for
// cloud-images.ubuntu.com; without WithCatalog the built-in catalog is used.
func ExampleStart() {
	mirror, stopMirror := testmirror.Start(testmirror.WithArches(image.ArchAMD64), testmirror.WithDiskSize(16<<20, 2<<20))
	defer stopMirror()
	cache, err := os.MkdirTemp("", "vmprep-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(cache)

	d, err := embedded.Start(context.Background(),
		embedded.WithCacheDir(cache),
		embedded.WithCatalog(mirror.CatalogOptions()...),
		embedded.WithShortPulls(), // close at once when the example ends
	)
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()

	res, err := d.Client().Prepare(context.Background(), client.Request{
		Spec:   image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64},
		Format: image.FormatQCOW2,
	})
	if err != nil {
		log.Fatal(err)
	}
	// The files are in the deployment's cache, under its images/ view.
	rel, err := filepath.Rel(d.Store().Root(), res.View)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Status, rel)
	// Output:
	// prepared images/ubuntu/24.04/amd64
}
