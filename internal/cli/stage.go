package cli

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"

	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/pkg/messages"
)

// StageMain is the whole main of a stage process: it parses flags, connects to
// NATS, opens the store and runs the given stages until SIGINT/SIGTERM, then
// drains. It returns the exit status.
func StageMain(command string, args []string, stderr io.Writer, stages ...string) int {
	fs := flag.NewFlagSet(command, flag.ContinueOnError)
	fs.SetOutput(stderr)
	var c Common
	c.RegisterConnection(fs)
	c.Register(fs)
	var rf ResolverFlags
	if slices.Contains(stages, messages.StageResolver) {
		rf.Register(fs)
	}
	var target TargetFlags
	if slices.Contains(stages, messages.StageConverter) {
		target.Register(fs)
	}
	var runner RunnerFlags
	runner.Register(fs)
	fs.Usage = Usage(fs, command+" [flags]")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	if fs.NArg() != 0 {
		fmt.Fprintf(stderr, "%s: unexpected argument %q\n", command, fs.Arg(0))
		return 2
	}
	log, err := c.Logger(stderr)
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", command, err)
		return 2
	}
	bucket, err := c.ObjectBucket()
	if err != nil {
		fmt.Fprintf(stderr, "%s: %v\n", command, err)
		return 2
	}
	if target.Target != "" {
		if err := messages.ValidateTarget(target.Target); err != nil {
			fmt.Fprintf(stderr, "%s: --target: %v\n", command, err)
			return 2
		}
	}
	ctx, stop := SignalContext()
	defer stop()

	st, err := c.OpenStore(log)
	if err != nil {
		log.Error("cannot open the content store", "err", err)
		return 1
	}
	deps := pipeline.Deps{
		Store:            st,
		Logger:           log,
		Concurrency:      c.Concurrency,
		ResolutionMaxAge: rf.MaxAge,
		RunnerOptions:    runner.Options(),
		ObjectBucket:     bucket,
		Replicas:         c.Replicas,
		Host:             target.Target,
		TargetedOnly:     target.TargetedOnly,
	}
	if slices.Contains(stages, messages.StageResolver) {
		if deps.Resolver, err = rf.Resolver(log); err != nil {
			log.Error("cannot build the catalog", "err", err)
			return 1
		}
	}
	if slices.Contains(stages, messages.StageFetcher) {
		deps.Downloader = Downloader(log)
	}
	nc, err := c.Connect("vmprep-"+command, log, true)
	if err != nil {
		log.Error("cannot connect", "err", err)
		return 1
	}
	defer nc.Close()
	log.Info("serving", "stages", JoinNames(stages), "nats", c.NATSURL, "cache", st.Root(), "store", c.Store, "concurrency", c.Concurrency)
	if err := pipeline.RunStages(ctx, nc, stages, deps); err != nil && ctx.Err() == nil {
		log.Error("stage failed", "err", err)
		return 1
	}
	log.Info("stopped")
	return 0
}
