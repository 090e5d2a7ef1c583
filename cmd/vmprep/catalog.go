package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vmprep/vmprep/internal/cli"
	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/resolve"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
)

const catalogSynopsis = `vmprep catalog [flags] [DISTRO [VERSION]]

Without arguments: the distros, how they boot and are signed, whether their
builds can be pinned by serial, and why an unsupported one is.
With DISTRO: its versions, and which are in the cache.
With DISTRO VERSION: the builds (serials) published, newest first, with their
dates and which one is cached. Serials come from the mirror's listing; without
network, from what the cache has recorded.`

// catalogCmd holds what the three forms of vmprep catalog need.
type catalogCmd struct {
	cat    *catalog.Catalog
	res    *resolve.Resolver
	st     *store.Store
	arch   image.Arch
	stdout io.Writer
	stderr io.Writer
	asJSON bool
}

// runCatalog implements `vmprep catalog [DISTRO [VERSION]]`.
func runCatalog(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("catalog", flag.ContinueOnError)
	fs.SetOutput(stderr)
	asJSON := fs.Bool("json", false, "print JSON")
	arch := fs.String("arch", "", "architecture whose cached builds are shown: amd64|x86_64 or arm64|aarch64 (default: this host's)")
	cacheDir := fs.String("cache-dir", os.Getenv(content.EnvCacheDir), "content store directory (env "+content.EnvCacheDir+"; default <user cache dir>/vmprep)")
	var rf cli.ResolverFlags
	rf.Register(fs)
	fs.Usage = cli.Usage(fs, catalogSynopsis)
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if len(pos) > 2 {
		fmt.Fprintln(stderr, "vmprep catalog: want at most DISTRO VERSION, e.g. vmprep catalog ubuntu 24.04")
		return 2
	}
	c := catalogCmd{stdout: stdout, stderr: stderr, asJSON: *asJSON, arch: image.HostArch()}
	if *arch != "" {
		if c.arch, err = image.ParseArch(*arch); err != nil {
			fmt.Fprintf(stderr, "vmprep catalog: --arch: %v\n", err)
			return 2
		}
	}
	log, _ := (&cli.Common{LogLevel: "error", LogFormat: "text"}).Logger(stderr)
	opts, err := rf.CatalogOptions(log)
	if err == nil {
		c.cat, err = catalog.New(opts...)
	}
	if err != nil {
		fmt.Fprintf(stderr, "vmprep catalog: %v\n", err)
		return 1
	}
	// An interactive command: a dead network is reported in seconds.
	c.res = resolve.New(c.cat, resolve.WithLogger(log), resolve.WithRetry(2, 250*time.Millisecond), resolve.WithTimeout(20*time.Second))
	if len(pos) > 0 {
		root := *cacheDir
		if root == "" {
			root, err = content.DefaultRoot()
		}
		if err == nil {
			c.st, err = store.Open(root, content.WithLogger(log))
		}
		if err != nil {
			fmt.Fprintf(stderr, "vmprep catalog: %v\n", err)
			return 1
		}
	}
	switch len(pos) {
	case 0:
		err = c.distros()
	case 1:
		err = c.versions(ctx, pos[0])
	default:
		err = c.serials(ctx, pos[0], pos[1])
	}
	if err != nil {
		fmt.Fprintf(stderr, "vmprep catalog: %s\n", oneLine(err.Error()))
		return 1
	}
	return 0
}

func (c *catalogCmd) printJSON(v any) error {
	enc := json.NewEncoder(c.stdout)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// signing says in a few words how an entry's manifests are trusted.
func signing(in catalog.Info) string {
	var kinds []string
	for _, k := range in.Signatures {
		kinds = append(kinds, string(k))
	}
	s := strings.Join(kinds, "+")
	switch {
	case len(in.Signatures) == 1 && in.Signatures[0] == catalog.SignatureNone:
		return "unsigned (the distribution publishes no signature)"
	case in.Keyring != "":
		return s + ", checked against " + in.Keyring
	}
	return s + ", no key configured (pass --keyring, or --allow-unsigned)"
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func (c *catalogCmd) distros() error {
	entries := c.cat.Entries()
	if c.asJSON {
		return c.printJSON(struct {
			Distros []catalog.Info `json:"distros"`
		}{entries})
	}
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "DISTRO\tBOOT\tSIGNING\tSERIALS\tDESCRIPTION")
	for _, in := range entries {
		if u := in.Unsupported; u != nil {
			fmt.Fprintf(tw, "%s\t-\t-\t-\tunsupported: %s\n", in.Distro, oneLine(u.Reason))
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", in.Distro, in.BootMode, signing(in), yesNo(in.Serials), oneLine(in.Description))
	}
	return tw.Flush()
}

// versionInfo is one version of a distro and what of it is cached.
type versionInfo struct {
	Version  string `json:"version"`
	Codename string `json:"codename,omitempty"`
	// Cached are the arches with a recorded resolution, with its serial.
	Cached []cachedImage `json:"cached,omitempty"`
}

type cachedImage struct {
	Arch   image.Arch `json:"arch"`
	Serial string     `json:"serial,omitempty"`
}

func (c *catalogCmd) versions(ctx context.Context, distro string) error {
	in, err := c.cat.Entry(distro)
	if err != nil {
		return err
	}
	if u := in.Unsupported; u != nil {
		msg := fmt.Sprintf("%s is not supported: %s", in.Distro, oneLine(u.Reason))
		if u.Instead != "" {
			msg += "; instead: " + oneLine(u.Instead)
		}
		if c.asJSON {
			return c.printJSON(struct {
				Distro catalog.Info `json:"distro"`
			}{in})
		}
		_, err := fmt.Fprintln(c.stdout, msg)
		return err
	}
	recorded, err := c.st.RecordedImages(ctx, in.Distro)
	if err != nil {
		return err
	}
	versions := slices.Clone(in.Versions)
	for _, r := range recorded {
		if !slices.Contains(versions, r.Version) {
			versions = append(versions, r.Version) // a version matched by a pattern
		}
	}
	slices.SortFunc(versions, func(a, b string) int { return image.CompareNatural(b, a) })
	var out []versionInfo
	for _, v := range versions {
		vi := versionInfo{Version: v, Codename: in.Codenames[v]}
		for _, r := range recorded {
			if r.Version == v {
				vi.Cached = append(vi.Cached, cachedImage{Arch: r.Arch, Serial: r.Serial})
			}
		}
		out = append(out, vi)
	}
	if c.asJSON {
		return c.printJSON(struct {
			Distro   catalog.Info  `json:"distro"`
			Versions []versionInfo `json:"versions"`
		}{in, out})
	}
	fmt.Fprintf(c.stdout, "%s: %s\nboot: %s; signing: %s; serials: %s\n\n", in.Distro, oneLine(in.Description), in.BootMode, signing(in), yesNo(in.Serials))
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tCODENAME\tCACHED")
	for _, vi := range out {
		var cached []string
		for _, ci := range vi.Cached {
			s := string(ci.Arch)
			if ci.Serial != "" {
				s += " (" + ci.Serial + ")"
			}
			cached = append(cached, s)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", vi.Version, orDash(vi.Codename), orDash(strings.Join(cached, ", ")))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if in.VersionPattern != "" {
		fmt.Fprintf(c.stdout, "\nOther versions matching %s are tried too.\n", in.VersionPattern)
	}
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// serialInfo is one build of a version.
type serialInfo struct {
	Serial string    `json:"serial"`
	Date   time.Time `json:"date,omitzero"`
	URL    string    `json:"url,omitempty"`
	// Cached: its resolution is recorded and every file is in the store.
	Cached bool `json:"cached"`
	// Recorded: its resolution is recorded (files may have been collected).
	Recorded bool `json:"recorded"`
	// NewestVerified: the newest build vmprep has verified for this image;
	// an older newest on the mirror is a rollback.
	NewestVerified bool `json:"newest_verified,omitempty"`
}

type serialsOutput struct {
	Spec image.Spec `json:"spec"`
	// Source is "network" (the mirror's listing) or "cache" (the serials
	// the cache has records of, when the listing cannot be read).
	Source  string       `json:"source"`
	Error   string       `json:"error,omitempty"`
	Serials []serialInfo `json:"serials"`
}

func (c *catalogCmd) serials(ctx context.Context, distro, version string) error {
	spec, err := c.cat.Canonical(image.Spec{Distro: distro, Version: version, Arch: c.arch})
	if err != nil {
		return err
	}
	// Only builds recorded under the trust roots in force count as cached:
	// no other would answer a prepare.
	roots, err := c.cat.Roots(spec)
	if err != nil {
		return err
	}
	out := serialsOutput{Spec: spec, Source: "network", Serials: []serialInfo{}}
	listed, err := c.res.Serials(ctx, spec)
	switch {
	case errors.Is(err, catalog.ErrNoSerials):
		return c.noSerials(ctx, spec)
	case err != nil && !resolve.IsRetryable(err):
		return err
	case err != nil:
		// No network: say so, and show what the cache knows.
		out.Source, out.Error = "cache", err.Error()
		recorded, rerr := c.st.RecordedSerials(ctx, spec, roots)
		if rerr != nil {
			return errors.Join(err, rerr)
		}
		for _, s := range recorded {
			listed = append(listed, resolve.Serial{Serial: s})
		}
	}
	mark, _ := c.st.NewestSerial(ctx, spec, roots)
	for _, l := range listed {
		si := serialInfo{Serial: l.Serial, Date: l.Date, URL: l.URL, NewestVerified: l.Serial == mark.Serial}
		build := spec
		build.Serial = l.Serial
		if rec, err := c.st.LoadSerialResolution(ctx, build, roots); err == nil {
			si.Recorded = true
			si.Cached = c.present(ctx, rec)
			if si.Date.IsZero() {
				si.Date = rec.ResolvedAt
			}
		}
		out.Serials = append(out.Serials, si)
	}
	if c.asJSON {
		return c.printJSON(out)
	}
	if out.Error != "" {
		fmt.Fprintf(c.stderr, "vmprep catalog: cannot list serials from the network, showing the cached ones: %s\n", oneLine(out.Error))
	}
	label := spec.Distro + " " + spec.Version
	if cn := c.codename(spec); cn != "" {
		label += " (" + cn + ")"
	}
	fmt.Fprintf(c.stdout, "%s %s, newest first (from the %s):\n", label, spec.Arch, map[string]string{"network": "mirror's listing", "cache": "cache"}[out.Source])
	tw := tabwriter.NewWriter(c.stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERIAL\tDATE\tCACHED")
	for _, si := range out.Serials {
		date := "-"
		if !si.Date.IsZero() {
			date = si.Date.UTC().Format(time.DateOnly)
		}
		cached := "-"
		switch {
		case si.Cached:
			cached = "yes"
		case si.Recorded:
			cached = "resolved (files not in the cache)"
		}
		if si.NewestVerified {
			cached += ", newest verified"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", si.Serial, date, cached)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if len(out.Serials) == 0 {
		fmt.Fprintln(c.stdout, "(none)")
	}
	return nil
}

// noSerials reports a version whose catalog entry has no serials.
func (c *catalogCmd) noSerials(ctx context.Context, spec image.Spec) error {
	roots, err := c.cat.Roots(spec)
	if err != nil {
		return err
	}
	rec, err := c.st.LoadResolution(ctx, spec, roots)
	cached := err == nil && c.present(ctx, rec)
	if c.asJSON {
		return c.printJSON(struct {
			Spec    image.Spec   `json:"spec"`
			Serials []serialInfo `json:"serials"`
			Cached  bool         `json:"cached"`
		}{spec, []serialInfo{}, cached})
	}
	fmt.Fprintf(c.stdout, "%s publishes no serials: each resolution takes the build published then (cached: %s)\n", spec.Distro, yesNo(cached))
	return nil
}

// present reports whether every file of a resolution is in the store.
func (c *catalogCmd) present(ctx context.Context, r catalog.Resolution) bool {
	for _, a := range r.Assets {
		if _, err := c.st.Lookup(ctx, a.Digest); err != nil {
			return false
		}
	}
	return len(r.Assets) > 0
}

func (c *catalogCmd) codename(spec image.Spec) string {
	in, err := c.cat.Entry(spec.Distro)
	if err != nil {
		return ""
	}
	return in.Codenames[spec.Version]
}
