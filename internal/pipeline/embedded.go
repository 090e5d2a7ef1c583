package pipeline

import (
	"context"
	"fmt"

	"github.com/nats-io/nats.go"
	"github.com/vmprep/vmprep/internal/natsembed"
)

// Embedded is a nats-server with JetStream running in this process together
// with some (or all) of the stages: the single-binary mode.
type Embedded struct {
	Server *natsembed.Server
	// Conn is a client connection for the embedding program.
	Conn   *nats.Conn
	stages *nats.Conn
	cancel context.CancelFunc
	done   chan error
}

// StartEmbedded starts the server (JetStream files in storeDir; listening on
// listen, or in-process only when it is empty) and runs the named stages on
// it until ctx ends or Close is called.
func StartEmbedded(ctx context.Context, storeDir, listen string, stages []string, d Deps) (*Embedded, error) {
	srv, err := natsembed.Start(natsembed.Options{StoreDir: storeDir, Listen: listen})
	if err != nil {
		return nil, err
	}
	nc, err := srv.Connect(nats.Name("vmprep-client"))
	if err != nil {
		srv.Shutdown()
		return nil, err
	}
	snc, err := srv.Connect(nats.Name("vmprep-stages"))
	if err != nil {
		nc.Close()
		srv.Shutdown()
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	e := &Embedded{Server: srv, Conn: nc, stages: snc, cancel: cancel, done: make(chan error, 1)}
	// Set up and bind the consumers before returning, so that a client can
	// publish at once and a configuration error is reported now.
	st, err := NewStages(ctx, snc, stages, d)
	if err != nil {
		cancel()
		snc.Close()
		nc.Close()
		srv.Shutdown()
		return nil, fmt.Errorf("start stages: %w", err)
	}
	go func() { st.Run(ctx); e.done <- nil }()
	return e, nil
}

// Close drains the stages, then stops the server.
func (e *Embedded) Close() error {
	e.cancel()
	err := <-e.done
	e.stages.Close()
	e.Conn.Close()
	e.Server.Shutdown()
	return err
}
