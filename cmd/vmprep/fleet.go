package main

import (
	"context"
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
	"github.com/vmprep/vmprep/internal/fleet"
	"github.com/vmprep/vmprep/internal/fleetkv"
	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/pkg/image"
)

const fleetUsage = "vmprep fleet want|unwant|ls|apply|sync|status [flags]\n\n" +
	"Declared selections: which images which converter hosts (--target names) must hold, kept in KV\n" +
	"bucket " + fleetkv.Bucket + " (made by vmprep setup; only the operator writes selections). The resolver\n" +
	"looks for new builds of followed selections every --sync-interval and rolls them out; each converter\n" +
	"host pulls what its plan names and reports its state. See docs/fleet.md.\n\n" +
	"  want [flags] DISTRO VERSION    add or change a selection\n" +
	"  unwant [flags] DISTRO VERSION  remove one (its builds are freed on its hosts)\n" +
	"  ls [--json]                    the selections and the build each is at\n" +
	"  apply FILE                     make the selections those of a YAML list (what FILE does not name is unwanted)\n" +
	"  sync [--wait D]                look for new builds now\n" +
	"  status [--json]                host × selection: build held, state, bytes, since; each rollout's phase\n"

func runFleet(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprint(stderr, "usage: "+fleetUsage)
		if len(args) == 0 {
			return 2
		}
		return 0
	}
	sub := map[string]func(context.Context, []string, io.Writer, io.Writer) int{
		"want": fleetWant, "unwant": fleetUnwant, "ls": fleetLs, "apply": fleetApply, "sync": fleetSync, "status": fleetStatus,
	}[args[0]]
	if sub == nil {
		return failf(stderr, 2, "vmprep fleet", "unknown subcommand %q (want, unwant, ls, apply, sync, status)", args[0])
	}
	return sub(ctx, args[1:], stdout, stderr)
}

// fleetCmd is what every fleet subcommand shares: its flags, connection
// and the fleet bucket.
type fleetCmd struct {
	name string
	fs   *flag.FlagSet
	conn opsConn
}

func newFleetCmd(name, usage string, stderr io.Writer) *fleetCmd {
	c := &fleetCmd{name: "vmprep fleet " + name, fs: flag.NewFlagSet("fleet "+name, flag.ContinueOnError)}
	c.fs.SetOutput(stderr)
	c.conn.register(c.fs)
	c.fs.Usage = cli.Usage(c.fs, usage)
	return c
}

// open connects and binds the bucket; the caller closes c.conn.
func (c *fleetCmd) open(ctx context.Context, stderr io.Writer) (context.Context, func(), *fleetkv.Store, error) {
	js, err := c.conn.connect("vmprep-fleet", stderr)
	if err != nil {
		return ctx, func() {}, nil, err
	}
	ctx, stop := stage.UntilDenied(ctx, c.conn.nc, "")
	st, err := fleetkv.Open(ctx, js, 1)
	if err != nil {
		stop()
		c.conn.close()
		return ctx, func() {}, nil, c.conn.explain(err)
	}
	return ctx, func() { stop(); c.conn.close() }, st, nil
}

// parseImage parses the flags and wants DISTRO VERSION after them
// (want, unwant), reporting whether to go on and the exit code if not.
func (c *fleetCmd) parseImage(args []string, stderr io.Writer) (ok bool, code int) {
	if ok, code := parseFlags(c.fs, args); !ok {
		return false, code
	}
	if c.fs.NArg() != 2 {
		return false, failf(stderr, 2, c.name, "want DISTRO VERSION")
	}
	return true, 0
}

// openLoaded is open followed by a read of the whole fleet state; entries
// that do not decode are warned about and skipped.
func (c *fleetCmd) openLoaded(ctx context.Context, stderr io.Writer) (context.Context, func(), *fleetkv.Store, fleetkv.State, error) {
	ctx, done, st, err := c.open(ctx, stderr)
	if err != nil {
		return ctx, done, nil, fleetkv.State{}, err
	}
	state, skipped, err := st.Load(ctx)
	if err != nil {
		done()
		return ctx, func() {}, nil, fleetkv.State{}, c.conn.explain(err)
	}
	warnSkipped(stderr, c.name, skipped)
	return ctx, done, st, state, nil
}

// listings are the selections of state, sorted, with their builds.
func listings(state fleetkv.State) []fleetListing {
	list := make([]fleetListing, 0, len(state.Selections))
	for _, sel := range sortedSelections(state.Selections) {
		list = append(list, fleetListing{ID: sel.ID(), Selection: sel, Build: state.Builds[sel.ID()]})
	}
	return list
}

// selectionFlags are the flags naming a selection (want and unwant).
type selectionFlags struct {
	hosts, arch, format string
}

func (f *selectionFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&f.hosts, "hosts", "*", "glob of the host names (--target) that must hold the image")
	fs.StringVar(&f.arch, "arch", "", "architecture (amd64, arm64; default: this machine's)")
	fs.StringVar(&f.format, "format", "qcow2", "disk format the hosts hold: raw or qcow2")
}

func (f *selectionFlags) selection(fs *flag.FlagSet) fleet.Selection {
	return fleet.Selection{Distro: fs.Arg(0), Version: fs.Arg(1), Arch: image.Arch(f.arch), Format: image.DiskFormat(f.format), Hosts: f.hosts}
}

func fleetWant(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := newFleetCmd("want", "vmprep fleet want [flags] DISTRO VERSION\n\n"+
		"Adds (or changes) the selection of DISTRO VERSION (arch, format) for the hosts matching --hosts.\n"+
		"Without --serial it follows the newest build; with it, it is pinned to that build (a rollback is\n"+
		"a pin to an older one). A new build reaches at most --max-parallel hosts at once, the --canary\n"+
		"hosts first, and the rollout pauses once --max-failed hosts failed to take it.", stderr)
	var sf selectionFlags
	sf.register(c.fs)
	serial := c.fs.String("serial", "", "pin this build (serial); empty follows the newest")
	keep := c.fs.Int("keep", fleet.DefaultKeep, "builds before the current one each host keeps")
	maxParallel := c.fs.Int("max-parallel", 0, "hosts moving to a new build at once (0: all)")
	canary := c.fs.String("canary", "", "glob of hosts that take a new build before the others")
	maxFailed := c.fs.Int("max-failed", 1, "pause a rollout once this many hosts failed (0: never)")
	if ok, code := c.parseImage(args, stderr); !ok {
		return code
	}
	sel := sf.selection(c.fs)
	sel.Serial, sel.Keep, sel.MaxParallel, sel.Canary, sel.MaxFailed = *serial, *keep, *maxParallel, *canary, *maxFailed
	sel, err := sel.Normalize(true)
	if err != nil {
		return failf(stderr, 2, c.name, "%v", err)
	}
	ctx, done, st, err := c.open(ctx, stderr)
	if err != nil {
		return failf(stderr, 1, c.name, "%v", err)
	}
	defer done()
	if err := st.PutSelection(ctx, sel); err != nil {
		return failf(stderr, 1, c.name, "%v", c.conn.explain(err))
	}
	fmt.Fprintf(stdout, "%s\t%s\n", sel.ID(), sel)
	return 0
}

func fleetUnwant(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := newFleetCmd("unwant", "vmprep fleet unwant [flags] DISTRO VERSION\n\n"+
		"Removes the selection named by DISTRO VERSION, --arch, --format and --hosts (as `fleet ls` shows\n"+
		"it). Its hosts free its builds that nothing else uses.", stderr)
	var sf selectionFlags
	sf.register(c.fs)
	if ok, code := c.parseImage(args, stderr); !ok {
		return code
	}
	sel, err := sf.selection(c.fs).Normalize(false)
	if err != nil {
		return failf(stderr, 2, c.name, "%v", err)
	}
	ctx, done, st, state, err := c.openLoaded(ctx, stderr)
	if err != nil {
		return failf(stderr, 1, c.name, "%v", err)
	}
	defer done()
	// A tampered selection (none of the operator's entries left) may be
	// removed too: the operator's delete settles it.
	if !slices.ContainsFunc(state.Selections, func(s fleet.Selection) bool { return s.ID() == sel.ID() }) &&
		!slices.Contains(state.Tampered, fleetkv.SelectionKey(sel.ID())) {
		return failf(stderr, 1, c.name, "no selection %s (see vmprep fleet ls)", sel)
	}
	if err := st.DeleteSelection(ctx, sel.ID()); err != nil {
		return failf(stderr, 1, c.name, "%v", c.conn.explain(err))
	}
	fmt.Fprintf(stdout, "removed %s\t%s\n", sel.ID(), sel)
	return 0
}

func fleetApply(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := newFleetCmd("apply", "vmprep fleet apply FILE\n\n"+
		"Makes the selections those of FILE, a YAML list of selections (fields distro, version, arch,\n"+
		"format, hosts, serial, keep, max_parallel, canary, max_failed): new and changed ones are written,\n"+
		"and selections FILE does not name are removed. FILE - reads standard input.", stderr)
	if ok, code := parseFlags(c.fs, args); !ok {
		return code
	}
	if c.fs.NArg() != 1 {
		return failf(stderr, 2, c.name, "want FILE")
	}
	r := io.Reader(os.Stdin)
	if name := c.fs.Arg(0); name != "-" {
		f, err := os.Open(name)
		if err != nil {
			return failf(stderr, 1, c.name, "%v", err)
		}
		defer f.Close()
		r = f
	}
	want, err := fleet.ParseFile(r)
	if err != nil {
		return failf(stderr, 1, c.name, "%s: %v", c.fs.Arg(0), err)
	}
	ctx, done, st, state, err := c.openLoaded(ctx, stderr)
	if err != nil {
		return failf(stderr, 1, c.name, "%v", err)
	}
	defer done()
	put, remove := fleet.Diff(state.Selections, want)
	for _, sel := range put {
		if err := st.PutSelection(ctx, sel); err != nil {
			return failf(stderr, 1, c.name, "%v", c.conn.explain(err))
		}
		fmt.Fprintf(stdout, "want\t%s\t%s\n", sel.ID(), sel)
	}
	for _, sel := range remove {
		if err := st.DeleteSelection(ctx, sel.ID()); err != nil {
			return failf(stderr, 1, c.name, "%v", c.conn.explain(err))
		}
		fmt.Fprintf(stdout, "unwant\t%s\t%s\n", sel.ID(), sel)
	}
	// A selection key with none of the operator's entries left (overwritten
	// by others, or written by a vmprep before entries were marked) that
	// FILE does not name: the operator's delete settles it.
	removed := len(remove)
	named := map[string]bool{}
	for _, sel := range want {
		named[sel.ID()] = true
	}
	for _, key := range state.Tampered {
		if id, ok := strings.CutPrefix(key, fleetkv.SelectionKey("")); ok && !named[id] {
			if err := st.DeleteSelection(ctx, id); err != nil {
				return failf(stderr, 1, c.name, "%v", c.conn.explain(err))
			}
			fmt.Fprintf(stdout, "unwant\t%s\t(tampered)\n", id)
			removed++
		}
	}
	fmt.Fprintf(stdout, "%d written, %d removed, %d unchanged\n", len(put), removed, len(want)-len(put))
	return 0
}

// fleetListing is what fleet ls prints.
type fleetListing struct {
	ID string `json:"id"`
	fleet.Selection
	Build fleet.Build `json:"build"`
}

func fleetLs(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := newFleetCmd("ls", "vmprep fleet ls [--json]\n\nLists the selections and the build each is at.", stderr)
	asJSON := c.fs.Bool("json", false, "print JSON")
	if ok, code := parseFlags(c.fs, args); !ok {
		return code
	}
	_, done, _, state, err := c.openLoaded(ctx, stderr)
	if err != nil {
		return failf(stderr, 1, c.name, "%v", err)
	}
	defer done()
	list := listings(state)
	if *asJSON {
		return writeJSON(stdout, stderr, c.name, list)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tIMAGE\tFORMAT\tHOSTS\tBUILD\tKEEP\tROLLOUT")
	for _, l := range list {
		build := l.Build.Serial
		if l.Pinned() {
			build = "pinned " + l.Serial
		} else if build == "" {
			build = "none yet"
		}
		if l.Build.Err != "" {
			build += " (last sync: " + l.Build.Err + ")"
		}
		fmt.Fprintf(tw, "%s\t%s %s %s\t%s\t%s\t%s\t%d\t%s\n", l.ID, l.Distro, l.Version, l.Arch, l.Format, l.Hosts, build, l.Keep, rolloutPolicy(l.Selection))
	}
	if err := tw.Flush(); err != nil {
		return failf(stderr, 1, c.name, "%v", err)
	}
	return 0
}

func rolloutPolicy(s fleet.Selection) string {
	parallel := "all"
	if s.MaxParallel > 0 {
		parallel = fmt.Sprint(s.MaxParallel)
	}
	out := "max-parallel " + parallel
	if s.Canary != "" {
		out += ", canary " + s.Canary
	}
	if s.MaxFailed > 0 {
		out += fmt.Sprintf(", pause at %d failed", s.MaxFailed)
	}
	return out
}

func sortedSelections(sels []fleet.Selection) []fleet.Selection {
	out := slices.Clone(sels)
	slices.SortFunc(out, func(a, b fleet.Selection) int { return strings.Compare(a.ID(), b.ID()) })
	return out
}

func warnSkipped(stderr io.Writer, name string, skipped []string) {
	for _, s := range skipped {
		fmt.Fprintf(stderr, "%s: warning: unreadable entry skipped: %s\n", name, s)
	}
}

func fleetSync(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := newFleetCmd("sync", "vmprep fleet sync [--wait D]\n\n"+
		"Asks the resolver to look for new builds of the followed selections now, and waits until it has\n"+
		"looked at each (at most --wait), printing the build each is at.", stderr)
	wait := c.fs.Duration("wait", 2*time.Minute, "how long to wait for the resolver to look (0: do not wait)")
	if ok, code := parseFlags(c.fs, args); !ok {
		return code
	}
	ctx, done, st, err := c.open(ctx, stderr)
	if err != nil {
		return failf(stderr, 1, c.name, "%v", err)
	}
	defer done()
	asked := time.Now().Add(-time.Second) // the resolver's clock may be a little behind
	if err := c.conn.nc.Publish(fleetkv.SubjectSync, nil); err != nil {
		return failf(stderr, 1, c.name, "%v", err)
	}
	if err := c.conn.nc.Flush(); err != nil {
		return failf(stderr, 1, c.name, "%v", c.conn.explain(err))
	}
	if *wait <= 0 {
		return 0
	}
	wctx, cancel := context.WithTimeout(ctx, *wait)
	defer cancel()
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		state, _, err := st.Load(wctx)
		if err != nil {
			return failf(stderr, 1, c.name, "%v", c.conn.explain(err))
		}
		pending := 0
		for _, sel := range state.Selections {
			if !sel.Pinned() && state.Builds[sel.ID()].CheckedAt.Before(asked) {
				pending++
			}
		}
		if pending == 0 {
			tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
			for _, sel := range sortedSelections(state.Selections) {
				if b := state.Builds[sel.ID()]; !sel.Pinned() {
					fmt.Fprintf(tw, "%s\t%s\t%s\n", sel.ID(), b.Serial, b.Err)
				}
			}
			_ = tw.Flush()
			return 0
		}
		select {
		case <-wctx.Done():
			return failf(stderr, 1, c.name, "%d selections not looked at within %s: is a resolver running (vmprep status)?", pending, *wait)
		case <-tick.C:
		}
	}
}

// fleetMatrix is what fleet status prints.
type fleetMatrix struct {
	Selections []fleetListing                     `json:"selections"`
	Rollouts   map[string]fleet.Progress          `json:"rollouts"`
	Hosts      []string                           `json:"hosts"`
	Status     map[string]map[string]fleet.Status `json:"status"`
}

func fleetStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	c := newFleetCmd("status", "vmprep fleet status [--json]\n\n"+
		"The matrix host × selection: the build each host holds, its state (waiting, pulling, ready,\n"+
		"failed: cause), bytes and since when; and where each selection's rollout stands.", stderr)
	asJSON := c.fs.Bool("json", false, "print JSON")
	if ok, code := parseFlags(c.fs, args); !ok {
		return code
	}
	_, done, _, state, err := c.openLoaded(ctx, stderr)
	if err != nil {
		return failf(stderr, 1, c.name, "%v", err)
	}
	defer done()
	_, progress := fleet.Plans(state.Fleet)
	m := fleetMatrix{Rollouts: progress, Status: state.Status}
	m.Hosts = slices.Sorted(slices.Values(state.Hosts))
	m.Selections = listings(state)
	if *asJSON {
		return writeJSON(stdout, stderr, c.name, m)
	}
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "#\tSELECTION\tTARGET\tROLLOUT")
	for i, l := range m.Selections {
		p := progress[l.ID]
		fmt.Fprintf(tw, "S%d\t%s\t%s\t%s\n", i+1, l.Selection, p.Target, p.Phase())
	}
	fmt.Fprintln(tw)
	header := []string{"HOST"}
	for i := range m.Selections {
		header = append(header, fmt.Sprintf("S%d", i+1))
	}
	fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, h := range m.Hosts {
		row := []string{h}
		for _, l := range m.Selections {
			row = append(row, statusCell(l.Selection, h, m.Status[h][l.ID]))
		}
		fmt.Fprintln(tw, strings.Join(row, "\t"))
	}
	if err := tw.Flush(); err != nil {
		return failf(stderr, 1, c.name, "%v", err)
	}
	return 0
}

// statusCell is one host × selection cell: "-" where the selection does
// not match the host.
func statusCell(sel fleet.Selection, host string, st fleet.Status) string {
	if !sel.Matches(host) {
		return "-"
	}
	if st.State == "" {
		return "waiting"
	}
	cell := st.String()
	if st.Bytes > 0 && st.State == fleet.StateReady {
		cell += " " + content.HumanSize(st.Bytes)
	}
	if !st.Since.IsZero() {
		cell += " since " + st.Since.UTC().Format(time.DateTime)
	}
	return cell
}
