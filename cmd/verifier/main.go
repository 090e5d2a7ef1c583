// Command verifier re-reads what the fetcher stored, checks it against the
// signed manifest's digest and commits it to the content store.
package main

import (
	"os"

	"github.com/vmprep/vmprep/internal/cli"
	"github.com/vmprep/vmprep/pkg/messages"
)

func main() {
	os.Exit(cli.StageMain("verifier", os.Args[1:], os.Stderr, messages.StageVerifier))
}
