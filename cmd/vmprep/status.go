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

	"github.com/vmprep/vmprep/internal/stage"

	"github.com/vmprep/vmprep/internal/cli"
	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/ops"
	"github.com/vmprep/vmprep/pkg/messages"
)

// runStatus shows the deployment at a glance, or one request's state.
func runStatus(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("status", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var conn opsConn
	conn.register(fs)
	asJSON := fs.Bool("json", false, "print JSON")
	namespace := fs.String("namespace", os.Getenv("VMPREP_NAMESPACE"), "the namespace of REQUEST-ID (env VMPREP_NAMESPACE; NAMESPACE.REQUEST-ID says the same; default: the default namespace)")
	fs.Usage = cli.Usage(fs, "vmprep status [flags] [[NAMESPACE.]REQUEST-ID]\n\n"+
		"Without a request id: the deployment's streams, each stage's backlog (pending, being worked\n"+
		"on, redelivered) and its live processes (each stage process keeps an entry, refreshed every\n"+
		"10 s, in KV bucket "+ops.BucketProcesses+"). With one: where each of the request's assets is,\n"+
		"and its result.")
	if ok, code := parseFlags(fs, args); !ok {
		return code
	}
	if fs.NArg() > 1 {
		return failf(stderr, 2, "vmprep status", "want at most one REQUEST-ID")
	}
	js, err := conn.connect("vmprep-status", stderr)
	if err != nil {
		return failf(stderr, 1, "vmprep status", "%v", err)
	}
	defer conn.close()
	// A call the permissions refuse fails at once, not after its timeout.
	ctx, stopWatching := stage.UntilDenied(ctx, conn.nc, "")
	defer stopWatching()
	if fs.NArg() == 1 {
		ns, id := *namespace, fs.Arg(0)
		if before, after, ok := strings.Cut(id, "."); ok { // request ids have no dots
			ns, id = before, after
		}
		st, err := ops.GetRequest(ctx, js, ns, id)
		if err != nil {
			return failf(stderr, 1, "vmprep status", "%v", conn.explain(err))
		}
		if *asJSON {
			return writeJSON(stdout, stderr, "vmprep status", st)
		}
		printRequest(stdout, st)
		return 0
	}
	ov, err := ops.GetOverview(ctx, js)
	if err != nil {
		return failf(stderr, 1, "vmprep status", "%v", conn.explain(err))
	}
	if *asJSON {
		return writeJSON(stdout, stderr, "vmprep status", ov)
	}
	printOverview(stdout, ov)
	return 0
}

func printOverview(w io.Writer, ov ops.Overview) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "STREAM\tMESSAGES\tSIZE\tCONSUMERS")
	for _, s := range ov.Streams {
		fmt.Fprintf(tw, "%s\t%d\t%s\t%d\n", s.Name, s.Messages, content.HumanSize(int64(s.Bytes)), s.Consumers)
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "STAGE\tSUBJECT\tPENDING\tIN PROGRESS\tREDELIVERED\tIDLE PULLS\tPROCESSES")
	for _, c := range ov.Consumers {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%d\n", c.Name, c.Filter, c.Pending, c.AckPending, c.Redelivered, c.Waiting, processesServing(ov.Processes, c.Name))
	}
	fmt.Fprintln(tw)
	fmt.Fprintln(tw, "PROCESS\tSTAGE\tHOST\tPID\tVERSION\tUP\tCONSUMING")
	for _, p := range ov.Processes {
		consuming := "yes"
		if !p.Consuming {
			consuming = "NO: " + p.Problem
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", p.Name, p.Stage, p.Host, p.PID, p.Version, time.Since(p.Started).Round(time.Second), consuming)
	}
	_ = tw.Flush()
	if len(ov.Processes) == 0 {
		fmt.Fprintln(w, "(no live stage process has announced itself)")
	}
	if len(ov.Idle) > 0 {
		fmt.Fprintf(w, "\nno live process serves: %s\n", strings.Join(ov.Idle, ", "))
	}
	for _, c := range ov.Consumers {
		if len(c.Drift) > 0 {
			fmt.Fprintf(w, "\nCHANGED SINCE SETUP: consumer %s: %s\n  its stage takes no work from it: run `vmprep setup` as an admin user to restore it\n", c.Name, strings.Join(c.Drift, "; "))
		}
	}
	for _, u := range ov.Stranded {
		fmt.Fprintf(w, "WARNING: %s: start a %s (or vmprep serve --stages %s); until then its requests are not answered\n", u, stageName(u.Consumer), stageName(u.Consumer))
	}
}

// processesServing counts the processes that pull from consumer. A process
// running several stages (vmprep serve) has a liveness entry per stage, each
// naming all its consumers: it is one process, counted once.
func processesServing(ps []ops.Process, consumer string) int {
	seen := map[string]bool{}
	for _, p := range ps {
		if p.Serves(consumer) {
			seen[fmt.Sprintf("%s/%d/%s", p.Host, p.PID, p.Started)] = true
		}
	}
	return len(seen)
}

func printRequest(w io.Writer, st ops.RequestStatus) {
	state := "in progress"
	switch {
	case st.Result != nil:
		state = string(st.Result.Status)
	case st.Queued:
		state = "waiting for the resolver"
	}
	target := ""
	if st.Target != "" {
		target = " for " + st.Target
	}
	fmt.Fprintf(w, "request %s: %s %s %s, %s%s — %s\n", messages.RequestKey(st.Namespace, st.RequestID), st.Spec.Distro, st.Spec.Version, st.Spec.Arch, st.Format, target, state)
	if len(st.Assets) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		fmt.Fprintln(tw, "ASSET\tSTATUS\tWHERE\tFILE")
		for _, a := range st.Assets {
			where := "done"
			if !a.Done {
				where = "unknown"
				if a.Stage != "" {
					where = "at the " + a.Stage + " (" + a.Subject + ")"
				}
			}
			file := a.Path
			switch {
			case a.Failure != nil:
				file = a.Failure.Error()
			case file != "" && a.Host != "":
				file = a.Host + ":" + file
			case file == "" && a.Object != nil:
				file = "object " + a.Object.Bucket + "/" + a.Object.Name
			case file == "":
				file = a.URL
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", a.Role, a.Status, where, file)
		}
		_ = tw.Flush()
	}
	if st.ScanTruncated {
		fmt.Fprintf(w, "(the work stream is too long to search whole; some assets may be missing)\n")
	}
	if st.RefusedResult != "" {
		fmt.Fprintf(w, "refused a stored result: %s\n", st.RefusedResult)
	}
	if r := st.Result; r != nil {
		fmt.Fprintf(w, "result (%s):\n", r.CompletedAt.Local().Format(time.DateTime))
		if r.Status == messages.ResultPrepared {
			printResult(w, *r)
		} else if r.Failure != nil {
			fmt.Fprintf(w, "failed:     %s\n", r.Failure.Error())
		}
	}
}

// stageName is the stage process that serves a consumer: the resolver
// runs the collector too; a target host's consumer is a converter's.
func stageName(consumer string) string {
	switch {
	case consumer == messages.StageCollector:
		return messages.StageResolver
	case slices.Contains(ops.StageConsumers(), consumer):
		return consumer
	}
	return messages.StageConverter
}
