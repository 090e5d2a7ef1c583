package pipeline

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/messages"
)

// ErrNoDeployment means the NATS server has no vmprep streams: no stage has
// ever started against it.
var ErrNoDeployment = errors.New("no vmprep deployment on this NATS server")

// NewRequestID returns a random request id.
func NewRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Prepare publishes req and waits for its one result (which may already exist
// when the request id was used before). onProgress, if set, receives progress
// events while waiting.
func Prepare(ctx context.Context, nc *nats.Conn, req messages.PrepareRequest, onProgress func(messages.Progress)) (messages.Result, error) {
	if req.RequestID == "" {
		req.RequestID = NewRequestID()
	}
	if err := req.Validate(); err != nil {
		return messages.Result{}, err
	}
	spec, err := req.Spec.Normalize()
	if err != nil {
		return messages.Result{}, err
	}
	req.Spec = spec
	js, err := jetstream.New(nc)
	if err != nil {
		return messages.Result{}, err
	}
	if !nc.IsConnected() {
		return messages.Result{}, fmt.Errorf("not connected to NATS at %s", nc.Opts.Url)
	}
	if _, err := js.Stream(ctx, messages.StreamWork); err != nil {
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			return messages.Result{}, fmt.Errorf("%w (stream %s is missing: start the stages or vmprep serve)", ErrNoDeployment, messages.StreamWork)
		}
		return messages.Result{}, fmt.Errorf("reach the vmprep deployment: %w", err)
	}
	if onProgress != nil {
		sub, err := nc.Subscribe(messages.ProgressSubject(req.RequestID), func(m *nats.Msg) {
			var p messages.Progress
			if messages.Decode(m.Data, messages.TypeProgress, &p) == nil {
				onProgress(p)
			}
		})
		if err != nil {
			return messages.Result{}, err
		}
		defer func() { _ = sub.Unsubscribe() }()
	}
	// Subscribe to the result before publishing, from the last stored one, so
	// neither a fast answer nor an earlier answer to the same id is missed.
	cons, err := js.OrderedConsumer(ctx, messages.StreamResults, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{messages.ResultSubject(req.RequestID)},
		DeliverPolicy:  jetstream.DeliverLastPerSubjectPolicy,
	})
	if err != nil {
		return messages.Result{}, fmt.Errorf("watch for the result: %w", err)
	}
	data, err := messages.Encode(messages.TypePrepareRequest, &req)
	if err != nil {
		return messages.Result{}, err
	}
	if _, err := js.Publish(ctx, messages.SubjectPrepare, data, jetstream.WithMsgID("prepare."+req.RequestID)); err != nil {
		return messages.Result{}, fmt.Errorf("publish prepare request: %w", err)
	}
	for {
		m, err := nextWithContext(ctx, cons)
		if err != nil {
			if ctx.Err() != nil {
				return messages.Result{}, fmt.Errorf("waiting for the result of request %s: %w", req.RequestID, ctx.Err())
			}
			if errors.Is(err, nats.ErrConnectionClosed) {
				return messages.Result{}, fmt.Errorf("waiting for the result of request %s: %w", req.RequestID, err)
			}
			continue // timeouts and reconnects: keep waiting
		}
		var res messages.Result
		if err := messages.Decode(m.Data(), messages.TypeResult, &res); err != nil {
			return messages.Result{}, fmt.Errorf("unreadable result for request %s: %w", req.RequestID, err)
		}
		if (res.Spec != catalog.ImageSpec{} && res.Spec != spec) || (res.Format != "" && res.Format != req.Format) {
			return messages.Result{}, fmt.Errorf("%w: request id %s was already used for %s %s %s (%s)",
				ErrRequestIDReused, req.RequestID, res.Spec.Distro, res.Spec.Version, res.Spec.Arch, res.Format)
		}
		return res, nil
	}
}

// ErrRequestIDReused means a request id already names a different request.
var ErrRequestIDReused = errors.New("request id reused")

// nextWithContext waits for the next message but returns as soon as ctx ends:
// an ordered consumer's Next keeps recreating its consumer while the server is
// away and does not watch the context meanwhile.
func nextWithContext(ctx context.Context, cons jetstream.Consumer) (jetstream.Msg, error) {
	type next struct {
		m   jetstream.Msg
		err error
	}
	ch := make(chan next, 1)
	go func() {
		fctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		m, err := cons.Next(jetstream.FetchContext(fctx))
		ch <- next{m, err}
	}()
	select {
	case n := <-ch:
		return n.m, n.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
