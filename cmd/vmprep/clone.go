package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/vmprep/vmprep/internal/cli"
	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/store"
	"github.com/vmprep/vmprep/pkg/clone"
	"github.com/vmprep/vmprep/pkg/messages"
)

// cloneOnly reports whether a flag is clone's own; the others are
// prepare's and are passed to it.
func cloneOnly(name string) bool {
	switch name {
	case "size", "force", "require-cow", "from", "list", "json":
		return true
	}
	return false
}

// cloneOutput is what clone --json prints.
type cloneOutput struct {
	clone.Result
	// Image is prepare's result when clone prepared the image first.
	Image *messages.Result `json:"image,omitempty"`
}

// runClone implements `vmprep clone`: a writable disk for one VM from a
// prepared image, by the cheapest method the file system allows.
func runClone(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs, pf := newPrepareFlags("clone", stderr)
	sizeFlag := fs.String("size", "", "grow the clone's virtual size to SIZE (bytes, or with a K, M, G or T suffix: powers of 1024); never shrinks")
	force := fs.Bool("force", false, "replace an existing DEST")
	requireCOW := fs.Bool("require-cow", false, "fail rather than copy when the file system cannot share blocks (reflink, clonefile)")
	from := fs.String("from", "", "clone this disk (a file of the cache, or an images/ link to one) instead of preparing DISTRO VERSION")
	list := fs.Bool("list", false, "list the clones the cache knows of, and whether each still keeps its base")
	fs.Usage = cli.Usage(fs, "vmprep clone [flags] DISTRO VERSION DEST\n"+
		"vmprep clone [flags] --from PATH DEST\n"+
		"vmprep clone --list [--json]\n\n"+
		"Makes DEST a writable disk of its own for one VM from a prepared image (prepared first if it\n"+
		"is not ready: prepare's flags apply). --format raw clones the raw disk: reflink (XFS, btrfs,\n"+
		"bcachefs) or clonefile (APFS) in constant time, else a sparse copy (said plainly; --require-cow\n"+
		"refuses it). --format qcow2 writes a qcow2 overlay whose backing file is the cached base.\n"+
		"The cache records each clone: cache gc keeps a base while an overlay names it or a clone\n"+
		"shares its blocks.")
	pos, err := parseInterleaved(fs, args)
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	cacheDir := *pf.cacheDir
	if cacheDir == "" {
		if cacheDir, err = content.DefaultRoot(); err != nil {
			fmt.Fprintf(stderr, "vmprep clone: %v\n", err)
			return 1
		}
	}
	if *list {
		if len(pos) != 0 {
			fmt.Fprintln(stderr, "vmprep clone --list: takes no arguments")
			return 2
		}
		st, err := store.Open(cacheDir)
		if err != nil {
			fmt.Fprintf(stderr, "vmprep clone: %v\n", err)
			return 1
		}
		return listClones(ctx, st, *pf.asJSON, stdout, stderr)
	}
	var size int64
	if *sizeFlag != "" {
		if size, err = parseSize(*sizeFlag); err != nil {
			fmt.Fprintf(stderr, "vmprep clone: --size: %v\n", err)
			return 2
		}
	}
	format := clone.Format(*pf.format)
	if format != clone.FormatRaw && format != clone.FormatQcow2 {
		fmt.Fprintf(stderr, "vmprep clone: --format %q: want raw or qcow2\n", format)
		return 2
	}
	var base, dest string
	var image *messages.Result
	switch {
	case *from != "" && len(pos) == 1:
		base, dest = *from, pos[0]
	case *from == "" && len(pos) == 3:
		dest = pos[2]
		pmode, err := parseProgressMode(*pf.progress)
		if err != nil {
			fmt.Fprintf(stderr, "vmprep clone: %v\n", err)
			return 2
		}
		res, code := prepareForClone(ctx, fs, pos[0], pos[1], pmode.resolve(stderr, *pf.asJSON), stderr)
		if code != 0 {
			return code
		}
		if res.Target != "" {
			fmt.Fprintf(stderr, "vmprep clone: --target: the disk is on host %s; run vmprep clone there\n", res.Host)
			return 2
		}
		if res.Disk == "" {
			fmt.Fprintln(stderr, "vmprep clone: prepare returned no disk")
			return 1
		}
		base, image = res.Disk, &res
	default:
		fmt.Fprintln(stderr, "vmprep clone: want DISTRO VERSION DEST (e.g. vmprep clone ubuntu 24.04 vm1.qcow2), or --from PATH DEST")
		return 2
	}

	st, err := store.Open(cacheDir)
	if err != nil {
		fmt.Fprintf(stderr, "vmprep clone: %v\n", err)
		return 1
	}
	if _, err := st.StoredFile(base); err != nil {
		fmt.Fprintf(stderr, "vmprep clone: %v (--cache-dir names the cache that holds it)\n", err)
		return 1
	}
	opts := clone.Options{Format: format, Size: size, Force: *force, RequireCOW: *requireCOW}
	if !*pf.asJSON && cli.IsTerminal(stderr) {
		opts.Progress = copyProgress(stderr)
	}
	res, err := st.CloneDisk(ctx, base, dest, store.CloneOptions{Options: opts})
	if err != nil {
		fmt.Fprintf(stderr, "vmprep clone: %v\n", err)
		if errors.Is(err, clone.ErrExists) || errors.Is(err, clone.ErrShrink) {
			return 2
		}
		return 1
	}
	if *pf.asJSON {
		return writeJSON(stdout, stderr, "vmprep clone", cloneOutput{Result: res, Image: image})
	}
	fmt.Fprintf(stdout, "path:    %s\n", res.Path)
	fmt.Fprintf(stdout, "format:  %s\n", res.Format)
	fmt.Fprintf(stdout, "size:    %s (%d bytes)\n", content.HumanSize(res.Size), res.Size)
	switch res.Method {
	case clone.MethodCopy:
		fmt.Fprintln(stdout, "method:  copy — this file system cannot share blocks (XFS with reflink, btrfs or APFS can); the clone takes its own space")
	case clone.MethodOverlay:
		fmt.Fprintln(stdout, "method:  overlay (qcow2 backed by the base; cache gc keeps the base while this file names it)")
	default:
		fmt.Fprintf(stdout, "method:  %s (shares the base's blocks until written)\n", res.Method)
	}
	fmt.Fprintf(stdout, "base:    %s\n", res.Base)
	return 0
}

// prepareForClone runs prepare with the prepare flags given to clone and
// returns its result. Prepare prints its result as JSON for clone to read,
// and its progress on stderr as clone's own flags and stderr ask (pmode,
// resolved), as prepare alone would show it.
func prepareForClone(ctx context.Context, fs *flag.FlagSet, distro, version string, pmode progressMode, stderr io.Writer) (messages.Result, int) {
	args := []string{"--json", "--progress=" + string(pmode)}
	fs.Visit(func(f *flag.Flag) {
		if !cloneOnly(f.Name) && f.Name != "progress" {
			args = append(args, "--"+f.Name+"="+f.Value.String())
		}
	})
	var out bytes.Buffer
	if code := runPrepare(ctx, append(args, distro, version), &out, stderr); code != 0 {
		return messages.Result{}, code
	}
	var res messages.Result
	if err := json.Unmarshal(out.Bytes(), &res); err != nil {
		fmt.Fprintf(stderr, "vmprep clone: prepare's result: %v\n", err)
		return res, 1
	}
	return res, 0
}

// copyProgress prints a copy's progress on one terminal line.
func copyProgress(w io.Writer) func(done, total int64) {
	last := -1
	return func(done, total int64) {
		pct := int(done * 100 / max(total, 1))
		if pct == last {
			return
		}
		last = pct
		fmt.Fprintf(w, "\rcopying: %3d%% of %s", pct, content.HumanSize(total))
		if done >= total {
			fmt.Fprintln(w)
		}
	}
}

// parseSize parses a size: bytes, or a number with a K, M, G or T suffix
// (powers of 1024; an optional trailing "iB" or "B" is accepted).
func parseSize(s string) (int64, error) {
	t := strings.TrimSuffix(strings.TrimSuffix(strings.ToUpper(strings.TrimSpace(s)), "B"), "I")
	mult := int64(1)
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'K':
			mult = 1 << 10
		case 'M':
			mult = 1 << 20
		case 'G':
			mult = 1 << 30
		case 'T':
			mult = 1 << 40
		}
		if mult > 1 {
			t = t[:n-1]
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("%q is not a size (e.g. 20G, 512M, 1073741824)", s)
	}
	return n * mult, nil
}

// listClones prints the clones the cache records.
func listClones(ctx context.Context, st *store.Store, asJSON bool, stdout, stderr io.Writer) int {
	uses, err := st.Uses(ctx)
	if err != nil {
		fmt.Fprintf(stderr, "vmprep clone --list: %v\n", err)
		return 1
	}
	if asJSON {
		if uses == nil {
			uses = []store.UseStatus{}
		}
		return writeJSON(stdout, stderr, "vmprep clone", uses)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CLONE\tMETHOD\tBASE\tCREATED\tSTATE")
	for _, u := range uses {
		state := "keeps its base"
		if !u.Live {
			state = u.Why
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", u.Holder, u.Method, u.Base, u.Created.Local().Format("2006-01-02 15:04"), state)
	}
	if err := tw.Flush(); err != nil {
		return 1
	}
	return 0
}
