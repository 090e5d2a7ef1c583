// Package pipeline wires vmprep's domain packages (catalog/resolve, download,
// store, qcow2) into the stage handlers that run on JetStream through pkg/stage:
// resolver → fetcher → verifier → [converter] → collector. It also declares the
// streams, consumers and KV bucket, runs every stage in one process for the
// single-binary mode, and implements the client side of a prepare request.
package pipeline

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmprep/vmprep/pkg/messages"
)

// Stream and bucket retention.
const (
	resultsMaxAge  = 7 * 24 * time.Hour
	deadMaxAge     = 7 * 24 * time.Hour
	requestsMaxAge = 7 * 24 * time.Hour
	dedupWindow    = 2 * time.Minute
)

// Setup creates or updates the streams and the KV bucket the pipeline uses.
// Every stage process calls it at start-up; it is idempotent.
func Setup(ctx context.Context, js jetstream.JetStream) (jetstream.KeyValue, error) {
	streams := []jetstream.StreamConfig{
		{
			Name:        messages.StreamWork,
			Description: "vmprep pending work: prepare requests and asset events",
			Subjects:    []string{messages.SubjectPrepare, "vmprep.asset.>"},
			Retention:   jetstream.WorkQueuePolicy,
			Storage:     jetstream.FileStorage,
			Duplicates:  dedupWindow,
		},
		{
			Name:              messages.StreamResults,
			Description:       "vmprep final results, one per request id",
			Subjects:          []string{messages.SubjectResultPrefix + "*"},
			Retention:         jetstream.LimitsPolicy,
			Storage:           jetstream.FileStorage,
			MaxAge:            resultsMaxAge,
			MaxMsgsPerSubject: 1,
			Duplicates:        dedupWindow,
		},
		{
			Name:        messages.StreamDead,
			Description: "vmprep dead letters: messages no stage could process",
			Subjects:    []string{messages.SubjectDeadPrefix + "*"},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			MaxAge:      deadMaxAge,
			Duplicates:  dedupWindow,
		},
	}
	for _, cfg := range streams {
		if _, err := js.CreateOrUpdateStream(ctx, cfg); err != nil {
			return nil, fmt.Errorf("setup stream %s: %w", cfg.Name, err)
		}
	}
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      messages.BucketRequests,
		Description: "vmprep request state: joins a request's assets into one result",
		History:     1,
		TTL:         requestsMaxAge,
		Storage:     jetstream.FileStorage,
	})
	if err != nil {
		return nil, fmt.Errorf("setup key-value bucket %s: %w", messages.BucketRequests, err)
	}
	return kv, nil
}

// WaitForSetup retries Setup until it succeeds or ctx ends: a stage may start
// before its NATS server is reachable.
func WaitForSetup(ctx context.Context, js jetstream.JetStream, log *slog.Logger) (jetstream.KeyValue, error) {
	delay := 100 * time.Millisecond
	for attempt := 1; ; attempt++ {
		kv, err := Setup(ctx, js)
		if err == nil {
			return kv, nil
		}
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.Code >= 400 && apiErr.Code < 500 && apiErr.Code != 408 {
			// The server refused the configuration (not "not ready yet"): waiting won't help.
			return nil, err
		}
		if log != nil && (attempt == 1 || attempt%10 == 0) {
			log.Warn("waiting for NATS JetStream", "err", err)
		}
		if ctx.Err() != nil {
			return nil, errors.Join(err, ctx.Err())
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, errors.Join(err, ctx.Err())
		case <-t.C:
		}
		if delay < 2*time.Second {
			delay *= 2
		}
	}
}

// WaitForSetupOnce runs Setup once on nc.
func WaitForSetupOnce(ctx context.Context, nc *nats.Conn) (jetstream.KeyValue, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	return Setup(ctx, js)
}
