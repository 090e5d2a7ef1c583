package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/ops"
	"github.com/vmprep/vmprep/pkg/messages"
)

// A deployment missing a stage takes the request and never answers. While
// prepare --nats waits, watchStages looks at the work stream's consumers —
// first after watchFirst, then every watchEvery — and says which hold work
// that no process takes, so the user learns in seconds, not at the
// deadline. The request keeps waiting: the work is kept in the stream, and
// a stage process started later takes it up and answers.
const (
	watchFirst = 8 * time.Second
	watchGap   = 2 * time.Second // between a check's two samples
	watchEvery = 30 * time.Second
)

// watchStages runs until ctx ends (or the user may not read consumer info:
// then it says nothing). It uses a connection of its own, so that a refused
// look never shows as the request's own refusal. say prints one line.
func watchStages(ctx context.Context, connect func() (*nats.Conn, error), target string, say func(string), log *slog.Logger) {
	wait := func(d time.Duration) bool {
		select {
		case <-ctx.Done():
			return false
		case <-time.After(d):
			return true
		}
	}
	if !wait(watchFirst) {
		return
	}
	nc, err := connect()
	if err != nil {
		log.Debug("cannot watch the deployment's stages", "err", err)
		return
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return
	}
	consumers := ops.StageConsumers()
	if target != "" {
		consumers = append(consumers, messages.TargetConsumer(target))
	}
	said := ""
	for {
		found, err := ops.FindUnconsumed(ctx, js, consumers, watchGap)
		if err != nil {
			if ctx.Err() == nil {
				log.Debug("cannot read the deployment's consumers; not watching them", "err", err)
			}
			return
		}
		var lines []string
		for _, u := range found {
			lines = append(lines, fmt.Sprintf("vmprep prepare: %s: waiting until one starts (start a %s; `vmprep status` shows the deployment)", u, stageName(u.Consumer)))
		}
		if now := strings.Join(lines, "\n"); now != said {
			for _, l := range lines {
				say(l)
			}
			said = now
		}
		if !wait(watchEvery) {
			return
		}
	}
}
