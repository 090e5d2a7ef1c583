package testutil

import (
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/natsembed"
)

// EmbeddedJetStream starts an in-process nats-server with JetStream in a
// temporary directory and connects to it; both end with the test.
func EmbeddedJetStream(tb testing.TB, opts ...nats.Option) (*natsembed.Server, *nats.Conn, jetstream.JetStream) {
	tb.Helper()
	srv, err := natsembed.Start(natsembed.Options{StoreDir: tb.TempDir()})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(srv.Shutdown)
	nc, err := srv.Connect(opts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		tb.Fatal(err)
	}
	return srv, nc, js
}
