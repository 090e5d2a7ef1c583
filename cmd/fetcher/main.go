// Command fetcher downloads assets into the content store's ingest area,
// resuming partial downloads left by earlier workers.
package main

import (
	"os"

	"github.com/vmprep/vmprep/internal/cli"
	"github.com/vmprep/vmprep/pkg/messages"
)

func main() {
	os.Exit(cli.StageMain("fetcher", os.Args[1:], os.Stderr, messages.StageFetcher))
}
