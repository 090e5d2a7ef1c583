// Command converter converts verified qcow2 disks to raw for requests that
// want raw (Apple Virtualization.framework), with vmprep's native converter.
package main

import (
	"os"

	"github.com/vmprep/vmprep/internal/cli"
	"github.com/vmprep/vmprep/pkg/messages"
)

func main() {
	os.Exit(cli.StageMain("converter", os.Args[1:], os.Stderr, messages.StageConverter))
}
