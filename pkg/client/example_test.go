package client_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"slices"

	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/client"
	"github.com/vmprep/vmprep/pkg/embedded"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// startExample starts what the examples talk to: an embedded deployment
// (pkg/embedded, as a backend's tests would use) on a fresh cache, whose
// catalog points at a local mirror with Ubuntu's layout signed by a
// throwaway key, standing in for cloud-images.ubuntu.com. In production
// the client connects to a running deployment instead.
func startExample(opts ...embedded.Option) (*embedded.Deployment, func()) {
	mirror, stopMirror := testmirror.Start(testmirror.WithArches(image.ArchAMD64), testmirror.WithDiskSize(16<<20, 2<<20))
	cache, err := os.MkdirTemp("", "vmprep-example-")
	if err != nil {
		log.Fatal(err)
	}
	d, err := embedded.Start(context.Background(),
		// Short pulls: the deployment closes at once when the example ends.
		append([]embedded.Option{embedded.WithCacheDir(cache), embedded.WithCatalog(mirror.CatalogOptions()...), embedded.WithShortPulls()}, opts...)...)
	if err != nil {
		log.Fatal(err)
	}
	return d, func() {
		if err := d.Close(); err != nil {
			log.Print(err)
		}
		stopMirror()
		_ = os.RemoveAll(cache)
	}
}

func ExampleClient_Prepare() {
	d, stop := startExample()
	defer stop()
	c := d.Client() // or client.New(nc) on a connection of your own

	res, err := c.Prepare(context.Background(), client.Request{
		RequestID: "vm-1234", // yours to choose; the same id gets the same one result
		Spec:      image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64},
		Format:    image.FormatRaw,
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.RequestID, res.Status, res.Spec, res.DiskFormat)
	for _, role := range []image.Role{image.RoleKernel, image.RoleInitramfs, image.RoleDisk} {
		f := res.Files[role]
		// Published files carry their verified digest; a converted disk the
		// digest of the verified qcow2 it was made from.
		fmt.Println(role, f.Digest.Algorithm, f.DerivedFrom.Algorithm, f.Path != "")
	}
	// Output:
	// vm-1234 prepared ubuntu 24.04 amd64 raw
	// kernel sha256  true
	// initramfs sha256  true
	// disk  sha256 true
}

func ExampleConnect() {
	d, stop := startExample(embedded.WithListen("127.0.0.1:0"))
	defer stop()

	c, err := client.Connect(d.URL()) // e.g. "nats://nats.internal:4222"
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	res, err := c.Prepare(context.Background(), client.Request{
		Spec: image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(res.Status, res.DiskFormat, res.Disk != "")
	// Output: prepared qcow2 true
}

func ExampleFailedError() {
	d, stop := startExample()
	defer stop()

	_, err := d.Client().Prepare(context.Background(), client.Request{
		Spec: image.Spec{Distro: "alpine", Version: "3.20", Arch: image.ArchAMD64},
	})
	var failed *client.FailedError
	if errors.As(err, &failed) {
		fmt.Println("stage:", failed.Stage)
		fmt.Println("retryable:", failed.Retryable)
	}
	// Output:
	// stage: resolver
	// retryable: false
}

func ExampleWithProgressChan() {
	d, stop := startExample()
	defer stop()

	progress := make(chan client.Progress, 100) // when full, events are dropped, never waited for
	done := make(chan []image.Role)
	go func() {
		var fetched []image.Role
		for p := range progress {
			// A real caller would draw p.Done of p.Total here.
			if p.Stage == messages.StageFetcher && !slices.Contains(fetched, p.Asset) {
				fetched = append(fetched, p.Asset)
			}
		}
		slices.Sort(fetched)
		done <- fetched
	}()
	_, err := d.Client().Prepare(context.Background(), client.Request{
		Spec: image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64},
	}, client.WithProgressChan(progress))
	close(progress) // Prepare sends nothing once it has returned
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("fetch progress for:", <-done)
	// Output: fetch progress for: [disk initramfs kernel]
}

func ExampleErrRequestIDReused() {
	d, stop := startExample()
	defer stop()
	c := d.Client()
	ctx := context.Background()
	noble := image.Spec{Distro: "ubuntu", Version: "24.04", Arch: image.ArchAMD64}

	if _, err := c.Prepare(ctx, client.Request{RequestID: "vm-7", Spec: noble, Format: image.FormatQCOW2}); err != nil {
		log.Fatal(err)
	}
	_, err := c.Prepare(ctx, client.Request{RequestID: "vm-7", Spec: noble, Format: image.FormatRaw})
	fmt.Println(errors.Is(err, client.ErrRequestIDReused))
	// Output: true
}
