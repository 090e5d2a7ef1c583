package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/vmprep/vmprep/internal/cli"
	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/pkg/digest"
)

const cacheUsage = `usage: vmprep cache [--cache-dir D] COMMAND [flags]

commands:
  ls [--json]                       list blobs and derived files, their sizes and what uses them (images, records, clones)
  verify [--json]                   re-hash everything; quarantine what no longer matches
  gc [--dry-run] [--partial-max-age D] [--min-age D] [--purge-quarantine] [--json]
                                    remove what no image or record uses, and stale partial downloads

--cache-dir defaults to $` + content.EnvCacheDir + `, else the user cache directory + /vmprep.
`

// runCache implements `vmprep cache ls|verify|gc`.
func runCache(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	// --cache-dir may come before the subcommand; Parse stops at the subcommand.
	pre := flag.NewFlagSet("cache", flag.ContinueOnError)
	pre.SetOutput(stderr)
	cacheDir := pre.String("cache-dir", "", "content store directory (default $"+content.EnvCacheDir+", else <user cache dir>/vmprep)")
	pre.Usage = func() { fmt.Fprint(stderr, cacheUsage) }
	if err := pre.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	rest := pre.Args()
	if len(rest) == 0 {
		fmt.Fprint(stderr, cacheUsage)
		return 2
	}
	sub, rest := rest[0], rest[1:]
	fs := flag.NewFlagSet("cache "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.StringVar(cacheDir, "cache-dir", *cacheDir, "content store directory (default $"+content.EnvCacheDir+", else <user cache dir>/vmprep)")
	asJSON := fs.Bool("json", false, "print JSON")
	var gcOpts content.GCOptions
	switch sub {
	case "ls":
		fs.Usage = cli.Usage(fs, "vmprep cache ls [--json] [--cache-dir D]\n\n"+
			"Lists blobs and derived files: size (a sparse raw disk's apparent size), the disk space\n"+
			"they take, when they were committed, and the images, records and clones that use them.")
	case "verify":
		fs.Usage = cli.Usage(fs, "vmprep cache verify [--json] [--cache-dir D]\n\n"+
			"Re-hashes every stored file; one that no longer matches is moved to quarantine/ and\n"+
			"fetched or derived again by the next request that needs it.")
	case "gc":
		fs.Usage = cli.Usage(fs, "vmprep cache gc [--dry-run] [--partial-max-age D] [--min-age D] [--purge-quarantine] [--json] [--cache-dir D]\n\n"+
			"Removes what no image link, record or live clone uses (vmprep clone --list), and stale\n"+
			"partial downloads.")
		fs.BoolVar(&gcOpts.DryRun, "dry-run", false, "report what would be removed, remove nothing")
		fs.DurationVar(&gcOpts.PartialMaxAge, "partial-max-age", content.DefaultPartialMaxAge, "remove partial downloads untouched for this long")
		fs.DurationVar(&gcOpts.MinAge, "min-age", content.DefaultGCMinAge, "keep unreferenced files committed more recently than this (negative: no grace)")
		fs.BoolVar(&gcOpts.PurgeQuarantine, "purge-quarantine", false, "also empty the quarantine")
	case "-h", "--help", "help":
		fmt.Fprint(stdout, cacheUsage)
		return 0
	default:
		fmt.Fprintf(stderr, "vmprep cache: unknown command %q\n\n%s", sub, cacheUsage)
		return 2
	}
	if err := fs.Parse(rest); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "vmprep cache %s: unexpected argument %q\n", sub, fs.Arg(0))
		return 2
	}

	root := *cacheDir
	if root == "" {
		var err error
		if root, err = content.DefaultRoot(); err != nil {
			fmt.Fprintf(stderr, "vmprep cache: %v\n", err)
			return 1
		}
	}
	// Looking at a store that does not exist should not create one.
	if _, err := os.Stat(root); errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(stderr, "vmprep cache: no store at %s (nothing cached yet)\n", root)
		if !*asJSON {
			return 0
		}
		if sub == "gc" { // same shape as a real report
			return writeJSON(stdout, stderr, "vmprep cache", content.GCReport{DryRun: gcOpts.DryRun, Removed: []content.GCItem{}})
		}
		fmt.Fprintln(stdout, "[]")
		return 0
	}
	// Warnings (a quarantined file, gc waiting for a running conversion)
	// go to stderr; the results themselves are on stdout.
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	st, err := store.Open(root, content.WithLogger(logger))
	if err != nil {
		fmt.Fprintf(stderr, "vmprep cache: %v\n", err)
		return 1
	}
	switch sub {
	case "ls":
		return cacheList(ctx, st, *asJSON, stdout, stderr)
	case "verify":
		return cacheVerify(ctx, st, *asJSON, stdout, stderr)
	default:
		return cacheGC(ctx, st, gcOpts, *asJSON, stdout, stderr)
	}
}

func cacheList(ctx context.Context, st *store.Store, asJSON bool, stdout, stderr io.Writer) int {
	entries, err := st.List(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "vmprep cache ls: %v\n", err)
		return 1
	}
	if asJSON {
		return writeJSON(stdout, stderr, "vmprep cache", entries)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "KIND\tDIGEST\tSIZE\tON DISK\tCOMMITTED\tUSED BY")
	var total, allocated, unused int64
	var nBlobs, nDerived int
	for _, e := range entries {
		total += e.Size
		allocated += e.Allocated
		if !e.Referenced() {
			unused += e.Allocated
		}
		if e.Kind == content.KindBlob {
			nBlobs++
		} else {
			nDerived++
		}
		var uses []string
		if e.Derived != nil {
			uses = append(uses, fmt.Sprintf("%s of %s (%s)", e.Derived.Format, shortDigest(e.Derived.Source), e.Derived.Converter))
		}
		uses = append(uses, e.Images...)
		for _, r := range e.Records {
			uses = append(uses, fmt.Sprintf("record %s/%s/%s", r.Distro, r.Version, r.Arch))
		}
		for _, u := range e.Uses {
			uses = append(uses, fmt.Sprintf("%s %s (%s)", u.Kind, u.Holder, u.Method))
		}
		if !e.Referenced() {
			uses = append(uses, "(unused)")
		}
		committed := "-"
		if !e.CommittedAt.IsZero() {
			committed = e.CommittedAt.Local().Format("2006-01-02 15:04")
		}
		id := shortDigest(e.Digest)
		if e.Kind == content.KindDerived && e.SparseSHA256 != "" {
			id = shortDigest(digest.Digest{Algorithm: "sparse", Hex: e.SparseSHA256})
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", e.Kind, id, content.HumanSize(e.Size), content.HumanSize(e.Allocated), committed, strings.Join(uses, ", "))
	}
	if err := tw.Flush(); err != nil {
		return 1
	}
	// Sparse raw disks make the apparent total much larger than what the
	// files take; both are shown, and "unused" is what gc would free.
	fmt.Fprintf(stdout, "\n%d blobs, %d derived in %s: %s on disk (%s apparent), %s of it unused\n", nBlobs, nDerived,
		st.Root(), content.HumanSize(allocated), content.HumanSize(total), content.HumanSize(unused))
	return 0
}

// shortDigest abbreviates a digest for tables ("sha256:0123456789ab").
func shortDigest(d digest.Digest) string {
	if d.IsZero() {
		return "-"
	}
	h := d.Hex
	if len(h) > 12 {
		h = h[:12]
	}
	return string(d.Algorithm) + ":" + h
}

// verifyLine is a VerifyResult with its error as text, for JSON.
type verifyLine struct {
	content.VerifyResult
	Error string `json:"error,omitempty"`
}

func cacheVerify(ctx context.Context, st *store.Store, asJSON bool, stdout, stderr io.Writer) int {
	var results []verifyLine
	start := time.Now()
	err := st.Verify(ctx, func(r content.VerifyResult) {
		l := verifyLine{VerifyResult: r}
		if r.Err != nil {
			l.Error = r.Err.Error()
		}
		results = append(results, l)
		if asJSON {
			return
		}
		rel, _ := filepath.Rel(st.Root(), r.Path)
		var q *content.QuarantinedError
		switch {
		case r.OK:
			fmt.Fprintf(stdout, "ok    %s  %s\n", rel, content.HumanSize(r.Size))
		case errors.As(r.Err, &q) && q.To != "":
			to, _ := filepath.Rel(st.Root(), q.To)
			fmt.Fprintf(stdout, "BAD   %s: %s; moved to %s\n", rel, q.Reason, to)
		case errors.As(r.Err, &q):
			fmt.Fprintf(stdout, "BAD   %s: %s; removed\n", rel, q.Reason)
		default:
			fmt.Fprintf(stdout, "BAD   %s: %v\n", rel, r.Err)
		}
	})
	if asJSON {
		if results == nil {
			results = []verifyLine{}
		}
		if code := writeJSON(stdout, stderr, "vmprep cache", results); code != 0 {
			return code
		}
	}
	var verified int64
	for _, r := range results {
		verified += r.Size
	}
	if err != nil {
		fmt.Fprintf(stderr, "vmprep cache verify: %v\n", err)
		return 1
	}
	if !asJSON {
		fmt.Fprintf(stdout, "\n%d files, %s verified in %s\n", len(results), content.HumanSize(verified), time.Since(start).Round(time.Millisecond))
	}
	return 0
}

func cacheGC(ctx context.Context, st *store.Store, opts content.GCOptions, asJSON bool, stdout, stderr io.Writer) int {
	rep, err := st.GC(ctx, opts)
	if err != nil {
		fmt.Fprintf(stderr, "vmprep cache gc: %v\n", err)
		return 1
	}
	if asJSON {
		if rep.Removed == nil {
			rep.Removed = []content.GCItem{}
		}
		if code := writeJSON(stdout, stderr, "vmprep cache", rep); code != 0 {
			return code
		}
		return gcFailures(rep, stderr)
	}
	verb := "removed"
	if rep.DryRun {
		verb = "would remove"
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	for _, it := range rep.Removed {
		rel, _ := filepath.Rel(st.Root(), it.Path)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", verb, it.Kind, rel, content.HumanSize(it.Size), it.Reason)
	}
	if err := tw.Flush(); err != nil {
		return 1
	}
	for _, p := range rep.Busy {
		fmt.Fprintf(stdout, "busy (in use, kept): %s\n", p)
	}
	fmt.Fprintf(stdout, "%s %d files, %s; kept %d\n", verb, len(rep.Removed), content.HumanSize(rep.Freed), rep.Kept)
	return gcFailures(rep, stderr)
}

// gcFailures reports files GC could not remove; they make the exit status 1.
func gcFailures(rep content.GCReport, stderr io.Writer) int {
	for _, it := range rep.Failed {
		fmt.Fprintf(stderr, "vmprep cache gc: %s %s: %s\n", it.Kind, it.Path, it.Reason)
	}
	if len(rep.Failed) > 0 {
		return 1
	}
	return 0
}

// writeJSON prints v as indented JSON; command names the failure.
func writeJSON(stdout, stderr io.Writer, command string, v any) int {
	enc := json.NewEncoder(stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(v); err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", command, err)
		return 1
	}
	return 0
}
