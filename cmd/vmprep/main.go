// Command vmprep prepares virtual-machine boot images: it resolves an image
// name to its published kernel, initramfs and root disk, downloads and verifies
// them against signed checksum manifests, stores them in a content-addressed
// cache and converts the disk to raw when the hypervisor needs it.
//
//	vmprep prepare [flags] DISTRO VERSION   prepare an image (embedded NATS, or --nats URL)
//	vmprep clone [flags] DISTRO VERSION DEST  a writable disk for one VM (reflink, overlay or copy)
//	vmprep serve [flags]                    run a NATS server with JetStream and the stages
//	vmprep convert SRC DST                  convert a qcow2 (or raw) image to raw
//	vmprep inspect [--json] FILE            describe a disk image
//	vmprep cache ls|verify|gc [flags]       look after the content store
//	vmprep catalog [DISTRO [VERSION]]       list distros, versions, and the builds (serials) published
//	vmprep setup [flags]                    create the streams, buckets and consumers (as the operator)
//	vmprep passwd < FILE                    a bcrypt hash of a password, for nats-server's users
//	vmprep fleet want|unwant|ls|apply|sync|status  images kept on every host (selections)
//	vmprep status [flags] [REQUEST-ID]      a deployment at a glance, or one request
//	vmprep dead ls|show|replay [flags]      dead letters: list, show, replay after a fix
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/vmprep/vmprep/internal/cli"
	"github.com/vmprep/vmprep/internal/version"
)

type command struct {
	run     func(ctx context.Context, args []string, stdout, stderr io.Writer) int
	summary string
}

func commands() map[string]command {
	return map[string]command{
		"prepare": {runPrepare, "prepare an image: vmprep prepare [flags] DISTRO VERSION"},
		"serve":   {runServe, "run an embedded NATS server with JetStream and the pipeline stages"},
		"clone":   {runClone, "a writable disk for one VM: vmprep clone [flags] DISTRO VERSION DEST"},
		"convert": {runConvert, "convert a qcow2 (or raw) image to raw: vmprep convert SRC DST"},
		"inspect": {runInspect, "describe a disk image: vmprep inspect [--json] FILE"},
		"cache":   {runCache, "look after the content store: vmprep cache ls|verify|gc"},
		"catalog": {runCatalog, "list distros, versions and published builds: vmprep catalog [DISTRO [VERSION]]"},
		"passwd":  {runPasswd, "print a bcrypt hash of a password (stdin) for nats-server's users: vmprep passwd"},
		"setup":   {runSetup, "create the streams, buckets and stage consumers, as the operator: vmprep setup [--replicas 3]"},
		"users":   {runUsers, "one NATS user per converter host: vmprep users converters --hosts H1,H2 --out DIR"},
		"fleet":   {runFleet, "images kept on every host: vmprep fleet want|unwant|ls|apply|sync|status"},
		"status":  {runStatus, "a deployment at a glance, or one request: vmprep status [--nats URL] [REQUEST-ID]"},
		"dead":    {runDead, "dead letters: vmprep dead ls | show SEQ | replay SEQ"},
		"version": {runVersion, "print the version"},
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: vmprep COMMAND [flags] [args]")
	fmt.Fprintln(w, "\ncommands:")
	for _, name := range []string{"prepare", "clone", "catalog", "serve", "setup", "fleet", "status", "dead", "passwd", "users", "convert", "inspect", "cache", "version"} {
		fmt.Fprintf(w, "  %-8s %s\n", name, commands()[name].summary)
	}
	fmt.Fprintln(w, "\nRun 'vmprep COMMAND -h' for a command's flags.")
}

func runVersion(_ context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("version", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = cli.Usage(fs, "vmprep version\n\nPrints the version of this build, the commit it was built from and the Go toolchain\n(a release build sets the version with -ldflags \"-X github.com/vmprep/vmprep/internal/version.release=…\").")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "vmprep version: unexpected argument %q\n", fs.Arg(0))
		return 2
	}
	fmt.Fprint(stdout, version.Read())
	return 0
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "--version" || args[0] == "-version") {
		args[0] = "version"
	}
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(stderr)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	cmd, ok := commands()[args[0]]
	if !ok {
		fmt.Fprintf(stderr, "vmprep: unknown command %q\n", args[0])
		usage(stderr)
		return 2
	}
	ctx, stop := cli.SignalContext()
	defer stop()
	return cmd.run(ctx, args[1:], stdout, stderr)
}
