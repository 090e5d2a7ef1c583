package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/vmprep/vmprep/internal/stage"

	"github.com/vmprep/vmprep/internal/cli"
	"github.com/vmprep/vmprep/internal/ops"
	"github.com/vmprep/vmprep/pkg/messages"
)

// runDead lists, shows and replays dead letters.
func runDead(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	const synopsis = "vmprep dead ls [--stage S] [--limit N] [--json] | show [--json] SEQ | replay SEQ  [connection flags]"
	if len(args) == 0 || (args[0] != "ls" && args[0] != "show" && args[0] != "replay") {
		if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
			fmt.Fprintf(stderr, "usage: %s\n", synopsis)
			return 0
		}
		fmt.Fprintf(stderr, "usage: %s\n", synopsis)
		return 2
	}
	sub := args[0]
	fs := flag.NewFlagSet("dead "+sub, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var conn opsConn
	conn.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	stageName := fs.String("stage", "", "ls: only this stage's dead letters")
	limit := fs.Int("limit", 1000, "ls: list at most this many")
	help := map[string]string{
		"ls":     "vmprep dead ls [flags]\n\nLists the dead letters in " + messages.StreamDead + " (kept 7 days), oldest first: messages no stage could process, with the reason.",
		"show":   "vmprep dead show [flags] SEQ\n\nShows one dead letter, with its original message (as text when printable, else base64).",
		"replay": "vmprep dead replay [flags] SEQ\n\nPublishes a dead letter's original message again on its subject, after whatever made it fail\nwas fixed. Refused when the original was truncated, or its request already has its one result\n(a request id has one result; ask again under a new id). Replaying twice within two minutes\npublishes once (Nats-Msg-Id replay.<sha256 of the original>).",
	}
	fs.Usage = cli.Usage(fs, help[sub])
	if ok, code := parseFlags(fs, args[1:]); !ok {
		return code
	}
	prefix := "vmprep dead " + sub
	var seq uint64
	switch {
	case sub == "ls" && fs.NArg() != 0:
		return failf(stderr, 2, prefix, "unexpected argument %q", fs.Arg(0))
	case sub != "ls":
		if fs.NArg() != 1 {
			return failf(stderr, 2, prefix, "want one SEQ (see vmprep dead ls)")
		}
		n, err := strconv.ParseUint(fs.Arg(0), 10, 64)
		if err != nil || n == 0 {
			return failf(stderr, 2, prefix, "SEQ %q is not a dead letter's sequence number (see vmprep dead ls)", fs.Arg(0))
		}
		seq = n
	}
	js, err := conn.connect("vmprep-dead", stderr)
	if err != nil {
		return failf(stderr, 1, prefix, "%v", err)
	}
	defer conn.close()
	// A call the permissions refuse fails at once, not after its timeout.
	ctx, stopWatching := stage.UntilDenied(ctx, conn.nc, "")
	defer stopWatching()

	switch sub {
	case "ls":
		entries, truncated, err := ops.DeadLetters(ctx, js, *stageName, *limit)
		if err != nil {
			return failf(stderr, 1, prefix, "%v", conn.explain(err))
		}
		if *asJSON {
			if entries == nil {
				entries = []ops.DeadEntry{}
			}
			return writeJSON(stdout, stderr, "vmprep dead", entries)
		}
		if len(entries) == 0 {
			fmt.Fprintln(stdout, "no dead letters")
			return 0
		}
		tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "SEQ\tAT\tSTAGE\tSUBJECT\tREQUEST\tREASON")
		for _, e := range entries {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.At.Local().Format(time.DateTime), e.Stage, e.Subject, orDash(e.RequestID), oneLine(clip(e.Reason, 120)))
		}
		_ = tw.Flush()
		if truncated {
			fmt.Fprintf(stdout, "(the first %d; --limit shows more)\n", *limit)
		}
		return 0
	case "show":
		e, err := ops.GetDeadLetter(ctx, js, seq)
		if err != nil {
			return failf(stderr, 1, prefix, "%v", conn.explain(err))
		}
		if *asJSON {
			return writeJSON(stdout, stderr, "vmprep dead", e)
		}
		printDeadLetter(stdout, e)
		return 0
	default:
		r, err := ops.Replay(ctx, js, seq)
		if err != nil {
			return failf(stderr, 1, prefix, "%v", conn.explain(err))
		}
		if *asJSON {
			return writeJSON(stdout, stderr, "vmprep dead", r)
		}
		if r.Duplicate {
			fmt.Fprintf(stdout, "dead letter %d was already replayed moments ago (%s): not published again\n", seq, r.MsgID)
		} else {
			fmt.Fprintf(stdout, "replayed dead letter %d to %s (Nats-Msg-Id %s)\n", seq, r.Subject, r.MsgID)
		}
		if r.RequestID != "" {
			fmt.Fprintf(stdout, "follow it with: vmprep status %s\n", r.RequestID)
		}
		return 0
	}
}

func printDeadLetter(w io.Writer, e ops.DeadEntry) {
	fmt.Fprintf(w, "seq:        %d\n", e.Seq)
	fmt.Fprintf(w, "at:         %s\n", e.At.Local().Format(time.RFC3339))
	fmt.Fprintf(w, "stage:      %s\n", e.Stage)
	fmt.Fprintf(w, "subject:    %s\n", e.Subject)
	fmt.Fprintf(w, "request:    %s\n", orDash(e.RequestID))
	fmt.Fprintf(w, "reason:     %s\n", e.Reason)
	fmt.Fprintf(w, "size:       %d bytes (sha256 %s)\n", e.Size, e.SHA256)
	if e.Truncated {
		fmt.Fprintf(w, "truncated:  only the first %d bytes were kept; it cannot be replayed\n", len(e.Data))
	}
	if printable(e.Data) {
		var pretty bytes.Buffer
		if json.Indent(&pretty, e.Data, "", "  ") == nil {
			fmt.Fprintf(w, "data:\n%s\n", pretty.String())
		} else {
			fmt.Fprintf(w, "data:\n%s\n", e.Data)
		}
		return
	}
	fmt.Fprintf(w, "data (base64, not printable):\n%s\n", base64.StdEncoding.EncodeToString(e.Data))
}

// printable: valid UTF-8 with no control characters but line breaks and tabs.
func printable(b []byte) bool {
	if !utf8.Valid(b) {
		return false
	}
	for _, r := range string(b) {
		if unicode.IsControl(r) && r != '\n' && r != '\t' && r != '\r' {
			return false
		}
	}
	return true
}

func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return strings.ToValidUTF8(s[:n], "") + "…"
}
