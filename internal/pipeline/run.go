package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmprep/vmprep/pkg/download"
	"github.com/vmprep/vmprep/pkg/messages"
	"github.com/vmprep/vmprep/pkg/stage"
	"github.com/vmprep/vmprep/pkg/store"
)

// AllStages lists every stage in pipeline order.
var AllStages = []string{messages.StageResolver, messages.StageFetcher, messages.StageVerifier, messages.StageConverter, messages.StageCollector}

// ParseStages reads a comma-separated stage list; "all" means every stage and
// "none" (or "") means no stage.
func ParseStages(s string) ([]string, error) {
	switch strings.TrimSpace(s) {
	case "all":
		return append([]string(nil), AllStages...), nil
	case "", "none":
		return nil, nil
	}
	var out []string
	seen := map[string]bool{}
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		ok := false
		for _, known := range AllStages {
			ok = ok || known == name
		}
		if !ok {
			return nil, fmt.Errorf("unknown stage %q (stages: %s, all, none)", name, strings.Join(AllStages, ", "))
		}
		if !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	return out, nil
}

// Deps are what the stages need. Only the fields the chosen stages use must be set:
// the resolver needs Resolver; the fetcher Downloader; all need Store.
type Deps struct {
	Store      *store.Store
	Resolver   Resolver
	Downloader *download.Client
	Logger     *slog.Logger
	// Concurrency is the number of messages each stage works on at once in this process.
	Concurrency int
	// ResolutionMaxAge: see ResolverStage.MaxAge.
	ResolutionMaxAge time.Duration
	// RunnerOptions are appended to every runner's options (tests shorten waits).
	RunnerOptions []stage.Option
}

// RunStages sets up the streams and runs the named stages on nc until ctx
// ends, then drains them. It returns once every stage has stopped.
func RunStages(ctx context.Context, nc *nats.Conn, names []string, d Deps) error {
	st, err := NewStages(ctx, nc, names, d)
	if err != nil {
		return err
	}
	st.Run(ctx)
	return nil
}

// Stages are stage runners bound to their consumers, ready to run.
type Stages struct{ runners []*stage.Runner }

// Run serves until ctx ends, then drains every stage.
func (s *Stages) Run(ctx context.Context) {
	var wg sync.WaitGroup
	for _, r := range s.runners {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = r.Run(ctx)
		}()
	}
	wg.Wait()
}

// NewStages sets up the streams (waiting for the server if need be) and binds
// each named stage to its durable consumer.
func NewStages(ctx context.Context, nc *nats.Conn, names []string, d Deps) (*Stages, error) {
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.Concurrency <= 0 {
		d.Concurrency = 1
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	kv, err := WaitForSetup(ctx, js, d.Logger)
	if err != nil {
		return nil, err
	}
	progress := func(p messages.Progress) {
		data, err := messages.Encode(messages.TypeProgress, &p)
		if err == nil {
			_ = nc.Publish(messages.ProgressSubject(p.RequestID), data)
		}
	}
	type spec struct {
		filter  string
		handler stage.Handler
	}
	specs := map[string]spec{}
	for _, name := range names {
		log := d.Logger.With("stage", name)
		switch name {
		case messages.StageResolver:
			if d.Resolver == nil {
				return nil, errors.New("resolver stage needs a resolver")
			}
			h := &ResolverStage{Resolver: d.Resolver, Store: d.Store, KV: kv, MaxAge: d.ResolutionMaxAge, Logger: log}
			specs[name] = spec{messages.SubjectPrepare, h.Handle}
		case messages.StageFetcher:
			if d.Downloader == nil {
				return nil, errors.New("fetcher stage needs a downloader")
			}
			h := &FetcherStage{Store: d.Store, KV: kv, Downloader: d.Downloader, Progress: progress, Logger: log}
			specs[name] = spec{messages.SubjectFetch, h.Handle}
		case messages.StageVerifier:
			h := &VerifierStage{Store: d.Store, Logger: log}
			specs[name] = spec{messages.SubjectVerify, h.Handle}
		case messages.StageConverter:
			h := &ConverterStage{Store: d.Store, KV: kv, Progress: progress, Logger: log}
			specs[name] = spec{messages.SubjectConvert, h.Handle}
		case messages.StageCollector:
			h := &CollectorStage{Store: d.Store, KV: kv, Logger: log}
			specs[name] = spec{messages.SubjectDone, h.Handle}
		default:
			return nil, fmt.Errorf("unknown stage %q", name)
		}
	}
	var runners []*stage.Runner
	for _, name := range names {
		sp := specs[name]
		opts := append([]stage.Option{
			stage.WithConcurrency(d.Concurrency),
			stage.WithLogger(d.Logger),
			stage.WithFailure(FailurePolicy(name, d.Logger)),
			stage.WithDeadLetter(DeadLetterPolicy(name)),
		}, d.RunnerOptions...)
		r, err := stage.New(ctx, js, messages.StreamWork, name, sp.filter, sp.handler, opts...)
		if err != nil {
			return nil, err
		}
		runners = append(runners, r)
	}
	return &Stages{runners: runners}, nil
}
