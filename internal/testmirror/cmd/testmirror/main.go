// Command testmirror serves vmprep's test mirror (internal/testmirror) until
// interrupted: Ubuntu's cloud-image layout with real qcow2 disks made by
// qemu-img and manifests signed by a throwaway key. It is for trying vmprep
// without internet access (README "Try it without internet",
// deploy/docker/README.md):
//
//	go run ./internal/testmirror/cmd/testmirror --keyring /tmp/testmirror.asc --disk-size 2G:512M --throttle 20M --serials 20261119,20261120
//
// It prints the mirror's URL (for --mirror, VMPREP_MIRROR) and writes the
// key's public half to --keyring (for --keyring, VMPREP_KEYRING), which the
// resolver must be given: the images are signed by no one else. --disk-size
// makes disks large enough to watch, --throttle slows every download, and
// --serials publishes several builds (to pin one with --serial). On SIGHUP
// it publishes a new build of each version, a day after the newest, and
// prints its serial. On SIGINT or SIGTERM it stops and removes the mirror's
// files. Needs qemu-img.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/internal/testmirror"
	"github.com/vmprep/vmprep/pkg/image"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	publish := make(chan struct{})
	go func() {
		for range hup {
			publish <- struct{}{}
		}
	}()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr, publish); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(2)
		}
		fmt.Fprintln(os.Stderr, "testmirror:", err)
		os.Exit(1)
	}
}

// run builds and serves the mirror until ctx ends. The first lines on stdout
// are "mirror: URL" and "keyring: FILE", then "serials: VERSION S1,S2" for
// each version. Each receive from publish (SIGHUP) publishes a new build of
// every version and prints "published: VERSION SERIAL".
func run(ctx context.Context, args []string, stdout, stderr io.Writer, publish <-chan struct{}) error {
	fs := flag.NewFlagSet("testmirror", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:0", "`HOST:PORT` to serve on (port 0: any free one); containers reach the host on their network's gateway (docker0: 172.17.0.1)")
	keyring := fs.String("keyring", "", "write the signing key's public half to `FILE` (default: a file in the mirror's temporary directory)")
	ubuntu := fs.String("ubuntu", "24.04", "comma-separated Ubuntu `VERSIONS` to publish")
	arches := fs.String("arch", "amd64,arm64", "comma-separated `ARCHES` to publish")
	diskSize := fs.String("disk-size", "", "each disk's `VIRTUAL[:DATA]` size, e.g. 2G:512M (the data is what is downloaded, about; suffixes K, M, G; default 64M:4M)")
	throttle := fs.String("throttle", "", "serve every file at about `RATE` bytes per second, e.g. 20M (default: as fast as it goes)")
	serials := fs.String("serials", testmirror.DefaultUbuntuSerial, "comma-separated `SERIALS` (YYYYMMDD) of the builds published for each version; release/ holds the newest")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: testmirror [--listen HOST:PORT] [--keyring FILE] [--ubuntu VERSIONS] [--arch ARCHES] [--disk-size VIRTUAL[:DATA]] [--throttle RATE] [--serials S1,S2]")
		fmt.Fprintln(stderr, "On SIGHUP (kill -HUP PID) it publishes a new build of each version and prints its serial.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		fs.Usage()
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	versions := strings.Split(*ubuntu, ",")
	opts := []testmirror.Option{testmirror.WithListenAddr(*listen), testmirror.WithUbuntu(versions...)}
	if *diskSize != "" {
		virtual, data, err := parseDiskSize(*diskSize)
		if err != nil {
			return fmt.Errorf("--disk-size %q: %w", *diskSize, err)
		}
		// Large disks are not compressed: qemu-img would take minutes.
		opts = append(opts, testmirror.WithDiskSize(virtual, data), testmirror.WithCompressedDisk(data <= 64<<20))
	}
	var rate int64
	if *throttle != "" {
		var err error
		if rate, err = parseSize(*throttle); err != nil || rate <= 0 {
			return fmt.Errorf("--throttle %q: want bytes per second > 0, e.g. 20M: %v", *throttle, err)
		}
	}
	ss := strings.Split(*serials, ",")
	for _, s := range ss {
		if _, err := time.Parse(serialLayout, s); err != nil {
			return fmt.Errorf("--serials: %q is not a serial of the form YYYYMMDD", s)
		}
	}
	opts = append(opts, testmirror.WithSerials(ss...))
	var as []image.Arch
	for _, a := range strings.Split(*arches, ",") {
		arch, err := image.ParseArch(a)
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
	if rate > 0 {
		m.Throttle(rate)
	}
	fmt.Fprintf(stdout, "mirror: %s\nkeyring: %s\n", m.URL, keyFile)
	for _, v := range versions {
		fmt.Fprintf(stdout, "serials: %s %s\n", v, strings.Join(m.Serials("ubuntu", v), ","))
	}
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-publish:
			for _, v := range versions {
				serial, err := publishNext(m, v)
				if err != nil {
					fmt.Fprintf(stderr, "testmirror: publish a new build of ubuntu %s: %v\n", v, err)
					continue
				}
				fmt.Fprintf(stdout, "published: %s %s\n", v, serial)
			}
		}
	}
}

// serialLayout is an Ubuntu build serial's date.
const serialLayout = "20060102"

// publishNext publishes a build of ubuntu version a day after its newest and
// returns its serial. The mirror reports a failure by panicking outside a
// test (testutil.ExampleTB): it is returned as an error instead.
func publishNext(m *testmirror.Mirror, version string) (serial string, err error) {
	have := m.Serials("ubuntu", version)
	if len(have) == 0 {
		return "", fmt.Errorf("no build published")
	}
	newest, err := time.Parse(serialLayout, have[0][:min(len(have[0]), len(serialLayout))])
	if err != nil {
		return "", fmt.Errorf("newest serial %q is not a date: %w", have[0], err)
	}
	serial = newest.AddDate(0, 0, 1).Format(serialLayout)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("%v", r)
		}
	}()
	m.AddSerial("ubuntu", version, serial)
	return serial, nil
}

// parseDiskSize reads VIRTUAL[:DATA]; DATA defaults to a sixteenth of
// VIRTUAL (the default 64M:4M's ratio) and may not exceed it.
func parseDiskSize(s string) (virtual, data int64, err error) {
	v, d, hasData := strings.Cut(s, ":")
	if virtual, err = parseSize(v); err != nil {
		return 0, 0, fmt.Errorf("virtual size: %w", err)
	}
	data = virtual / 16
	if hasData {
		if data, err = parseSize(d); err != nil {
			return 0, 0, fmt.Errorf("data size: %w", err)
		}
	}
	if virtual < 1<<20 || data <= 0 || data > virtual {
		return 0, 0, fmt.Errorf("want a virtual size of at least 1M and data between 1 byte and the virtual size")
	}
	return virtual, data, nil
}

// parseSize reads a byte count with an optional binary suffix K, M or G
// ("20M" is 20 MiB).
func parseSize(s string) (int64, error) {
	mult, num := int64(1), s
	if n := len(s); n > 0 {
		switch strings.ToUpper(s[n-1:]) {
		case "K":
			mult, num = 1<<10, s[:n-1]
		case "M":
			mult, num = 1<<20, s[:n-1]
		case "G":
			mult, num = 1<<30, s[:n-1]
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 || n > (1<<50)/mult {
		return 0, fmt.Errorf("%q is not a size (a number of bytes, with K, M or G)", s)
	}
	return n * mult, nil
}
