// Command testmirror serves vmprep's test mirror (internal/testmirror) until
// interrupted: Ubuntu's cloud-image layout with real qcow2 disks made by
// qemu-img and manifests signed by a throwaway key. It is for trying a
// deployment without internet access (deploy/docker/README.md):
//
//	go run ./internal/testmirror/cmd/testmirror --listen 172.17.0.1:8080 --keyring /tmp/testmirror.asc
//
// It prints the mirror's URL (for --mirror, VMPREP_MIRROR) and writes the
// key's public half to --keyring (for --keyring, VMPREP_KEYRING), which the
// resolver must be given: the images are signed by no one else. On SIGINT or
// SIGTERM it stops and removes the mirror's files. Needs qemu-img.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/catalog"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "testmirror:", err)
		os.Exit(1)
	}
}

// run builds and serves the mirror until ctx ends. The first lines on stdout
// are "mirror: URL" and "keyring: FILE".
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("testmirror", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:0", "`HOST:PORT` to serve on (port 0: any free one); containers reach the host on their network's gateway (docker0: 172.17.0.1)")
	keyring := fs.String("keyring", "", "write the signing key's public half to `FILE` (default: a file in the mirror's temporary directory)")
	ubuntu := fs.String("ubuntu", "24.04", "comma-separated Ubuntu `VERSIONS` to publish")
	arches := fs.String("arch", "amd64,arm64", "comma-separated `ARCHES` to publish")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: testmirror [--listen HOST:PORT] [--keyring FILE] [--ubuntu VERSIONS] [--arch ARCHES]")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	opts := []testmirror.Option{testmirror.WithListenAddr(*listen), testmirror.WithUbuntu(strings.Split(*ubuntu, ",")...)}
	var as []catalog.Arch
	for _, a := range strings.Split(*arches, ",") {
		arch, err := catalog.ParseArch(a)
		if err != nil {
			return fmt.Errorf("--arch %q: %w", a, err)
		}
		as = append(as, arch)
	}
	opts = append(opts, testmirror.WithArches(as...))

	// testmirror.New reports a failure (qemu-img missing, the address taken)
	// by panicking outside a test; say it as an error instead.
	var (
		m        *testmirror.Mirror
		stopSrv  func()
		buildErr error
	)
	func() {
		defer func() {
			if r := recover(); r != nil {
				buildErr = fmt.Errorf("%v", r)
			}
		}()
		m, stopSrv = testmirror.Start(opts...)
	}()
	if buildErr != nil {
		return buildErr
	}
	defer stopSrv()

	keyFile := m.KeyringFile()
	if *keyring != "" {
		key, err := os.ReadFile(m.KeyringFile())
		if err != nil {
			return err
		}
		if err := atomicfile.WriteFile(*keyring, key, 0o644); err != nil {
			return fmt.Errorf("--keyring: %w", err)
		}
		keyFile = *keyring
	}
	fmt.Fprintf(stdout, "mirror: %s\nkeyring: %s\n", m.URL, keyFile)
	<-ctx.Done()
	return nil
}
