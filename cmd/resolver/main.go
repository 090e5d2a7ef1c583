// Command resolver consumes prepare requests, resolves each image through the
// catalog (verifying signed manifests) and emits one fetch event per asset. It
// also runs the collector, which joins a request's assets into its one result.
package main

import (
	"os"

	"github.com/vmprep/vmprep/internal/cli"
	"github.com/vmprep/vmprep/pkg/messages"
)

func main() {
	os.Exit(cli.StageMain("resolver", os.Args[1:], os.Stderr, messages.StageResolver, messages.StageCollector))
}
