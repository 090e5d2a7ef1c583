package natsembed_test

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/vmprep/vmprep/internal/natsembed"
)

func TestLoopback(t *testing.T) {
	for host, want := range map[string]bool{
		"127.0.0.1": true, "127.1.2.3": true, "::1": true, "[::1]": true, "localhost": true, "LOCALHOST": true,
		"": false, "0.0.0.0": false, "::": false, "10.0.0.1": false, "nats.example": false,
	} {
		if got := natsembed.Loopback(host); got != want {
			t.Errorf("Loopback(%q) = %v, want %v", host, got, want)
		}
	}
}

func TestClientAuth(t *testing.T) {
	t.Setenv("VMPREP_TEST_EMPTY", "")
	tests := []struct {
		name, conf string
		authed     bool
	}{
		{"nothing", "listen: 127.0.0.1:-1\n", false},
		{"users", "authorization { users: [ {user: a, password: b} ] }\n", true},
		{"single user", "authorization { user: a, password: b }\n", true},
		{"token", "authorization { token: s3cret }\n", true},
		{"account users", "accounts { A: { users: [ {user: a, password: b} ] } }\n", true},
		// nats-server lets a client in as a user with an empty password
		// by naming it, with no password (seen against nats-server 2.15).
		{"a user with an empty password", "authorization { users: [ {user: a, password: b}, {user: c, password: \"\"} ] }\n", false},
		{"a password from an empty variable", "authorization { users: [ {user: a, password: $VMPREP_TEST_EMPTY} ] }\n", false},
		{"single user, empty password", "authorization { user: a, password: \"\" }\n", false},
		{"no_auth_user", "authorization { users: [ {user: a, password: b} ] }\nno_auth_user: a\n", false},
		{"nkeys", "authorization { users: [ {nkey: UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4} ] }\n", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := filepath.Join(t.TempDir(), "n.conf")
			if err := os.WriteFile(p, []byte(tt.conf), 0o600); err != nil {
				t.Fatal(err)
			}
			o, err := natsembed.LoadConfig(p)
			if err != nil {
				t.Fatal(err)
			}
			if got := natsembed.ClientAuth(o) != ""; got != tt.authed {
				t.Errorf("ClientAuth = %q, want authenticated %v", natsembed.ClientAuth(o), tt.authed)
			}
		})
	}
	if natsembed.ClientAuth(&server.Options{TLSVerify: true}) != "client certificates" {
		t.Error("verify: true is not client certificate authentication")
	}
	if natsembed.ClientAuth(nil) != "" {
		t.Error("no configuration authenticates")
	}
}
