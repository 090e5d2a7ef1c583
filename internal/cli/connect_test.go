package cli

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
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

// TestNoPasswordInClear: a password or token goes to a server beyond this
// host only over TLS (a tls:// URL, or --tls-ca/--tls-cert, with which
// nats.go refuses a server that offers none); a plain nats:// URL upgrades
// only when the server asks, and one an attacker stands in for does not.
// Refused before any dial, with the URL redacted and the fix; --insecure,
// loopback and no credentials are let through. Names resolve on a loopback
// DNS server that knows none, so nothing leaves this host either way.
func TestNoPasswordInClear(t *testing.T) {
	dns := testutil.StartNXDomain(t)
	pwFile := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pwFile, []byte("hunter2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ca := testutil.NewCA(t)
	const host = "nats1.vmprep-test.invalid:4222"
	tests := []struct {
		name    string
		c       Connection
		refused bool
	}{
		{"user over nats://", Connection{NATSURL: "nats://" + host, User: "alice", PasswordFile: pwFile}, true},
		{"user, bare host:port", Connection{NATSURL: host, User: "alice", PasswordFile: pwFile}, true},
		{"password in the URL", Connection{NATSURL: "nats://alice:p@ss/w#rd@" + host}, true},
		{"token in the URL", Connection{NATSURL: "nats://s3cr3t-token@" + host}, true},
		{"one server of a list in clear", Connection{NATSURL: "tls://" + host + ",nats://" + host, User: "alice", PasswordFile: pwFile}, true},
		{"websocket in clear", Connection{NATSURL: "ws://" + host, User: "alice", PasswordFile: pwFile}, true},
		{"tls://", Connection{NATSURL: "tls://" + host, User: "alice", PasswordFile: pwFile}, false},
		{"nats:// with --tls-ca", Connection{NATSURL: "nats://" + host, User: "alice", PasswordFile: pwFile, TLSCA: ca.CertFile}, false},
		{"--insecure", Connection{NATSURL: "nats://" + host, User: "alice", PasswordFile: pwFile, Insecure: true}, false},
		{"no credentials", Connection{NATSURL: "nats://" + host}, false},
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.c.dialer = dns.Dialer()
			nc, err := tt.c.Connect("test", log, false)
			if nc != nil {
				nc.Close()
				t.Fatal("connected to a name no DNS knows")
			}
			if got := errors.Is(err, ErrCleartext); got != tt.refused {
				t.Fatalf("refused for cleartext: %v, want %v (%v)", got, tt.refused, err)
			}
			if !tt.refused {
				return
			}
			msg := err.Error()
			for _, secret := range []string{"hunter2", "p@ss", "w#rd", "s3cr3t"} {
				if strings.Contains(msg, secret) {
					t.Errorf("the refusal shows a secret: %s", msg)
				}
			}
			for _, want := range []string{"nats1.vmprep-test.invalid:4222", "tls://", "--tls-ca", "--insecure"} {
				if !strings.Contains(msg, want) {
					t.Errorf("the refusal does not say %q: %s", want, msg)
				}
			}
		})
	}
	if n := dns.Queries(); n == 0 {
		t.Error("no case got past the guard to a lookup: the allowed ones were not tried")
	}

	// Loopback in clear is this host's business: it connects, with the
	// password, to a real server with users.
	srv, err := natsembed.Start(natsembed.Options{StoreDir: t.TempDir(), Listen: "127.0.0.1:0",
		Config: &server.Options{Users: []*server.User{{Username: "alice", Password: "hunter2"}}}})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	c := Connection{NATSURL: srv.ClientURL(), User: "alice", PasswordFile: pwFile}
	nc, err := c.Connect("test", log, false)
	if err != nil {
		t.Fatalf("loopback in clear: %v", err)
	}
	nc.Close()
}
