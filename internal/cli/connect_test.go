package cli

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmprep/vmprep/internal/pipeline"
	"github.com/vmprep/vmprep/internal/testutil"
)

// closedPort returns a loopback address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return addr
}

// TestUnreachableNATSSaysWhy: a stage started against a NATS URL where
// nothing listens logs the URL and "connection refused", and waiting for
// the streams says it is not connected — not only "context deadline exceeded".
func TestUnreachableNATSSaysWhy(t *testing.T) {
	addr := closedPort(t)
	var logs testutil.LockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	c := Connection{NATSURL: "nats://" + addr}
	nc, err := c.Connect("test", log, true)
	if err != nil {
		t.Fatalf("Connect with waitForServer: %v", err)
	}
	defer nc.Close()

	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	_, err = pipeline.WaitForSetup(ctx, js, pipeline.SetupConfig{Logger: log})
	if err == nil || !strings.Contains(err.Error(), "not connected to NATS at nats://"+addr) {
		t.Errorf("WaitForSetup = %v; want it to say it is not connected to nats://%s", err, addr)
	}

	// The reconnect loop's first failure is logged with its cause.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(logs.String(), "connection refused") && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	out := logs.String()
	if !strings.Contains(out, "cannot reach NATS") || !strings.Contains(out, addr) || !strings.Contains(out, "connection refused") {
		t.Errorf("logs do not say why NATS cannot be reached:\n%s", out)
	}
	if strings.Contains(out, "context deadline exceeded") && !strings.Contains(out, "not connected") {
		t.Errorf("logs blame a deadline:\n%s", out)
	}
}
