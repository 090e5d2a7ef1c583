package cli

import (
	"context"
	"log/slog"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/vmprep/vmprep/internal/natsembed"
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

// blackHole forwards TCP connections to target until swallow is called;
// from then on it reads and drops every byte both ways and closes nothing,
// as a network does that vanished under an established connection.
type blackHole struct {
	l       net.Listener
	target  string
	dropped atomic.Bool
}

func newBlackHole(t *testing.T, target string) *blackHole {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b := &blackHole{l: l, target: target}
	t.Cleanup(func() { _ = l.Close() })
	go func() {
		for {
			in, err := l.Accept()
			if err != nil {
				return
			}
			out, err := net.Dial("tcp", target)
			if err != nil {
				_ = in.Close()
				continue
			}
			t.Cleanup(func() { _ = in.Close(); _ = out.Close() })
			go b.pipe(out, in)
			go b.pipe(in, out)
		}
	}()
	return b
}

func (b *blackHole) pipe(dst, src net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := src.Read(buf)
		if err != nil {
			return
		}
		if !b.dropped.Load() {
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
	}
}

func (b *blackHole) swallow() { b.dropped.Store(true) }

// A connection whose network silently died is noticed by the pings (stale
// connection) and given up for a reconnect, instead of looking connected
// while nothing gets through. The ping interval is shortened for the test.
func TestSilentlyDeadConnectionIsNoticed(t *testing.T) {
	srv, err := natsembed.Start(natsembed.Options{StoreDir: t.TempDir(), Listen: "127.0.0.1:-1"})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	hole := newBlackHole(t, strings.TrimPrefix(srv.ClientURL(), "nats://"))

	var logs testutil.LockedBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	c := Connection{NATSURL: "nats://" + hole.l.Addr().String(), pingInterval: 50 * time.Millisecond}
	nc, err := c.Connect("test", log, false)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Flush(); err != nil {
		t.Fatalf("flush through the proxy: %v", err)
	}

	hole.swallow()
	deadline := time.Now().Add(30 * time.Second)
	for nc.IsConnected() && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if nc.IsConnected() {
		t.Fatal("the connection still says it is connected 30 s after its network went silent")
	}
	for !strings.Contains(logs.String(), "disconnected from NATS") && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if out := logs.String(); !strings.Contains(out, "disconnected from NATS") || !strings.Contains(out, "stale connection") {
		t.Errorf("the disconnect is not logged as a stale connection:\n%s", out)
	}
}
