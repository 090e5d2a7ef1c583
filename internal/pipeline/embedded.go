package pipeline

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/nats-io/nats.go"

	"github.com/vmprep/vmprep/internal/natsembed"
)

// Embedded is a nats-server with JetStream running in this process together
// with some (or all) of the stages: the single-binary mode.
type Embedded struct {
	Server *natsembed.Server
	// Conn is a client connection for the embedding program (nil for a
	// server with users that runs no stages and was given no credentials).
	Conn   *nats.Conn
	stages *nats.Conn
	bound  *Stages
	cancel context.CancelFunc
	done   chan struct{}
}

// StartEmbedded starts the server (JetStream files in storeDir; listening on
// listen, or in-process only when it is empty) and runs the named stages on
// it until ctx ends or Close is called.
func StartEmbedded(ctx context.Context, storeDir, listen string, stages []string, d Deps) (*Embedded, error) {
	return StartEmbeddedServer(ctx, natsembed.Options{StoreDir: storeDir, Listen: listen}, nil, stages, d)
}

// StartEmbeddedServer is StartEmbedded with the server options spelled out
// (a configuration file's users, TLS, cluster) and the options of this
// process's own connections (the credentials the server asks for).
func StartEmbeddedServer(ctx context.Context, so natsembed.Options, connOpts []nats.Option, stages []string, d Deps) (*Embedded, error) {
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	srv, err := natsembed.Start(so)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	e := &Embedded{Server: srv, cancel: cancel, done: make(chan struct{})}
	if len(stages) == 0 && len(connOpts) == 0 && natsembed.ClientAuth(so.Config) != "" {
		// A bare server whose configuration authenticates clients, and no
		// credentials for this process: it serves others, not itself.
		close(e.done)
		return e, nil
	}
	connOpts = append([]nats.Option{nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		d.Logger.Warn("NATS error", "err", err)
	})}, connOpts...)
	fail := func(err error) (*Embedded, error) {
		cancel()
		if e.stages != nil {
			e.stages.Close()
		}
		if e.Conn != nil {
			e.Conn.Close()
		}
		srv.Shutdown()
		return nil, err
	}
	e.Conn, err = srv.Connect(append([]nats.Option{nats.Name("vmprep-client")}, connOpts...)...)
	if err != nil {
		return fail(err)
	}
	if e.stages, err = srv.Connect(append([]nats.Option{nats.Name("vmprep-stages")}, connOpts...)...); err != nil {
		return fail(err)
	}
	// Set up and bind the consumers before returning, so that a client can
	// publish at once and a configuration error is reported now.
	st, err := NewStages(ctx, e.stages, stages, d)
	if err != nil {
		return fail(fmt.Errorf("start stages: %w", err))
	}
	e.bound = st
	go func() { st.Run(ctx); close(e.done) }()
	return e, nil
}

// Close drains the stages, then stops the server.
func (e *Embedded) Close() {
	e.cancel()
	<-e.done
	if e.stages != nil {
		e.stages.Close()
	}
	if e.Conn != nil {
		e.Conn.Close()
	}
	e.Server.Shutdown()
}
