package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// TestPasswd: the hash vmprep passwd prints lets the password (and only
// it) log in to a real nats-server; bad input is refused with the reason.
func TestPasswd(t *testing.T) {
	stdin := func(s string) *os.File {
		f := filepath.Join(t.TempDir(), "pw")
		if err := os.WriteFile(f, []byte(s), 0o600); err != nil {
			t.Fatal(err)
		}
		r, err := os.Open(f)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { r.Close() })
		return r
	}
	var stdout, stderr strings.Builder
	// The lowest cost: bcrypt is slow under the race detector.
	if code := passwd([]string{"--cost", "4"}, stdin("s3cret-"+t.Name()+"\n"), &stdout, &stderr); code != 0 {
		t.Fatalf("vmprep passwd: exit %d: %s", code, stderr.String())
	}
	hash := strings.TrimSpace(stdout.String())
	if !strings.HasPrefix(hash, "$2a$04$") {
		t.Fatalf("vmprep passwd printed %q, want a bcrypt hash of cost 4", hash)
	}

	srv, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true,
		Users: []*server.User{{Username: "alice", Password: hash}}})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	defer srv.Shutdown()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	for pw, ok := range map[string]bool{"s3cret-" + t.Name(): true, "s3cret-" + t.Name() + "\n": false, "other": false} {
		nc, err := nats.Connect(srv.ClientURL(), nats.UserInfo("alice", pw), nats.MaxReconnects(0), nats.Timeout(time.Minute))
		if (err == nil) != ok {
			t.Errorf("password %q: connect error %v, want accepted %v", pw, err, ok)
		}
		if nc != nil {
			nc.Close()
		}
	}

	for _, tc := range []struct {
		name, in string
		args     []string
		code     int
		says     string
	}{
		{"empty", "\n", nil, 1, "empty password"},
		{"too long", strings.Repeat("x", 73), nil, 1, "72 bytes"},
		{"low cost", "pw", []string{"--cost", "3"}, 2, "--cost 3"},
		{"argument", "pw", []string{"pw"}, 2, "standard input"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var stdout, stderr strings.Builder
			if code := passwd(tc.args, stdin(tc.in), &stdout, &stderr); code != tc.code || !strings.Contains(stderr.String(), tc.says) || stdout.Len() != 0 {
				t.Errorf("exit %d, stdout %q, stderr %q; want exit %d saying %q", code, stdout.String(), stderr.String(), tc.code, tc.says)
			}
		})
	}
}
