// Command fetch downloads one URL with internal/download, verifying its digest,
// for the fetch benchmark.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/signal"

	"github.com/vmprep/vmprep/internal/download"
	"github.com/vmprep/vmprep/pkg/digest"
)

func main() {
	url := flag.String("url", "", "URL to download")
	dest := flag.String("dest", "", "destination file")
	expected := flag.String("digest", "", "expected digest, sha256:<hex> or sha512:<hex>")
	size := flag.Int64("size", 0, "expected size in bytes (0: unknown)")
	bufSize := flag.Int("buf", download.DefaultBufferSize, "read buffer size")
	flag.Parse()
	d, err := digest.Parse(*expected)
	if err != nil {
		log.Fatalf("fetch: -digest: %v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	c := download.New(download.WithBufferSize(*bufSize))
	res, err := c.Fetch(ctx, download.Request{URL: *url, Dest: *dest, ExpectedSize: *size, Expected: d, Name: "bench"})
	if err != nil {
		log.Fatalf("fetch: %v", err)
	}
	if err := download.RemoveSidecar(*dest); err != nil {
		log.Fatalf("fetch: %v", err)
	}
	fmt.Printf("%d bytes %s attempts=%d\n", res.Size, res.Digest, res.Attempts)
}
