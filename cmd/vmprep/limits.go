package main

import (
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/pipeline"
)

// byteSize is a flag of a size in bytes: 1073741824, 1GiB, 512MiB, 64KiB.
type byteSize struct{ v *int64 }

var sizeUnits = []struct {
	suffix string
	mult   int64
}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}}

func (b byteSize) String() string {
	if b.v == nil {
		return ""
	}
	return formatBytes(*b.v)
}

func (b byteSize) Set(s string) error {
	n, err := parseBytes(s)
	if err != nil {
		return err
	}
	*b.v = n
	return nil
}

// parseBytes reads a size: a count of bytes, or one with a binary unit.
func parseBytes(s string) (int64, error) {
	num, mult := s, int64(1)
	for _, u := range sizeUnits {
		if n, ok := strings.CutSuffix(s, u.suffix); ok {
			num, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(num), 10, 64)
	if err != nil || n <= 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want a positive number of bytes, optionally with KiB, MiB, GiB or TiB", s)
	}
	return n * mult, nil
}

func formatBytes(n int64) string {
	if n <= 0 {
		return "-"
	}
	for _, u := range sizeUnits {
		if n >= u.mult && n%u.mult == 0 {
			return strconv.FormatInt(n/u.mult, 10) + u.suffix
		}
	}
	return strconv.FormatInt(n, 10) + "B"
}

// registerLimits adds setup's limit flags, with DefaultLimits as defaults;
// the returned func gives the limits once the flags are parsed.
func registerLimits(fs *flag.FlagSet) func() (pipeline.Limits, error) {
	l := pipeline.DefaultLimits()
	fs.Var(byteSize{&l.WorkMaxBytes}, "work-max-bytes", "max bytes of the work stream (pending requests and asset events); past it a publish is refused")
	fs.Int64Var(&l.WorkMaxMsgs, "work-max-msgs", l.WorkMaxMsgs, "max messages of the work stream; past it a publish is refused")
	msgSize := int64(l.MaxMsgSize)
	fs.Var(byteSize{&msgSize}, "max-msg-size", "max size of one message of the work, results and dead-letter streams")
	fs.Var(byteSize{&l.ResultsMaxBytes}, "results-max-bytes", "max bytes of the results stream (the oldest results go first)")
	fs.DurationVar(&l.ResultsMaxAge, "results-max-age", l.ResultsMaxAge, "how long results are kept")
	fs.Var(byteSize{&l.DeadMaxBytes}, "dead-max-bytes", "max bytes of the dead-letter stream (the oldest go first)")
	fs.DurationVar(&l.DeadMaxAge, "dead-max-age", l.DeadMaxAge, "how long dead letters are kept")
	fs.Var(byteSize{&l.BucketMaxBytes}, "bucket-max-bytes", "max bytes of each key-value bucket (request state, leases, verifier records, processes)")
	fs.Var(byteSize{&l.ObjectMaxBytes}, "object-max-bytes", "max bytes of the object bucket of --store nats:BUCKET (verified images: set it to what the servers' disks hold)")
	fs.IntVar(&l.QueuedPerNamespace, "max-queued-per-namespace", l.QueuedPerNamespace, "requests one namespace may have waiting or in progress in a resolver; more are answered with a failed result (0: no limit; resolvers read it when they start)")
	return func() (pipeline.Limits, error) {
		// The message size is an int32 on the server.
		if msgSize > 1<<30 {
			return l, fmt.Errorf("--max-msg-size %s: want at most 1GiB", formatBytes(msgSize))
		}
		l.MaxMsgSize = int32(msgSize)
		return l, l.Check()
	}
}

// printLimits writes the streams' limits as a table.
func printLimits(w io.Writer, rows []pipeline.StreamLimits, queued int) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "\nLIMITS\tMAX MSGS\tMAX BYTES\tMAX AGE\tMAX MSG SIZE\tWHEN FULL\tCHANGED")
	for _, r := range rows {
		msgs, age, size := "-", "-", "-"
		if r.MaxMsgs > 0 {
			msgs = strconv.FormatInt(r.MaxMsgs, 10)
		}
		if r.MaxAge > 0 {
			age = r.MaxAge.String()
		}
		if r.MaxMsgSize > 0 {
			size = formatBytes(int64(r.MaxMsgSize))
		}
		full := "drop oldest"
		if r.Discard == jetstream.DiscardNew {
			full = "refuse new"
		}
		changed := ""
		if r.Updated {
			changed = "updated"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Stream, msgs, formatBytes(r.MaxBytes), age, size, full, changed)
	}
	limit := "no limit"
	if queued > 0 {
		limit = strconv.Itoa(queued)
	}
	fmt.Fprintf(tw, "\nrequests per namespace waiting or in progress in a resolver: %s\n", limit)
	return tw.Flush()
}
