package vmdisk_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/clone"
	"github.com/vmprep/vmprep/pkg/embedded"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/vmdisk"
)

// A provisioning backend prepares an image, then gives each VM a writable
// disk of its own. Here the deployment is embedded, on a local mirror with
// Ubuntu's layout (internal/testmirror); in production the client connects
// to a running deployment whose cache is on this host.
func ExampleClone() {
	mirror, stopMirror := testmirror.Start(testmirror.WithArches(image.ArchAMD64), testmirror.WithDiskSize(16<<20, 2<<20))
	defer stopMirror()
	dir, err := os.MkdirTemp("", "vmprep-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	ctx := context.Background()
	d, err := embedded.Start(ctx, embedded.WithCacheDir(filepath.Join(dir, "cache")), embedded.WithCatalog(mirror.CatalogOptions()...))
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()

	res, err := d.Client().Prepare(ctx, client.Request{
		Spec:   image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64},
		Format: image.FormatQCOW2,
	})
	if err != nil {
		log.Fatal(err)
	}
	// The zero Options clone the disk in its own format: a qcow2 disk gets
	// a qcow2 overlay backed by the cached base; a raw one a reflink or
	// clonefile where the file system can, else a sparse copy.
	vm, err := vmdisk.Clone(ctx, res, filepath.Join(dir, "vm-1234.qcow2"), clone.Options{Size: 20 << 30})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(vm.Method, vm.Format, vm.Size>>30, "GiB")

	// The clone is recorded in the cache: cache gc keeps its base while
	// the overlay names it.
	use, ok, err := d.Store().UseOf("clone", vm.Path)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(ok, use.Live, use.Base == "blobs/sha256/"+res.Files[image.RoleDisk].Digest.Hex)
	// Output:
	// overlay qcow2 20 GiB
	// true true true
}
