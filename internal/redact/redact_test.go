package redact_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/vmprep/vmprep/internal/redact"
)

func TestURLs(t *testing.T) {
	tests := []struct{ in, want string }{
		{"nats://stage:s3cret@nats.example:4222", "nats://REDACTED@nats.example:4222"},
		{"nats://a:p1@h1:4222,nats://b:p2@h2:4222", "nats://REDACTED@h1:4222,nats://REDACTED@h2:4222"},
		{"nats://TOKEN123@h:4222", "nats://REDACTED@h:4222"},
		{"tls://u:p%40ss@h:4222", "tls://REDACTED@h:4222"},
		{"connect to NATS at nats://u:pw@127.0.0.1:4222: refused", "connect to NATS at nats://REDACTED@127.0.0.1:4222: refused"},
		{"https://mirror.example/ubuntu/?q=a@b", "https://mirror.example/ubuntu/?q=a@b"},
		{"nats://127.0.0.1:4222", "nats://127.0.0.1:4222"},
		{"user@example.com wrote", "user@example.com wrote"},
	}
	for _, tt := range tests {
		if got := redact.URLs(tt.in); got != tt.want {
			t.Errorf("URLs(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestError(t *testing.T) {
	base := errors.New("refused")
	err := redact.Error(fmt.Errorf("connect to nats://u:hunter2@h:4222: %w", base))
	if strings.Contains(err.Error(), "hunter2") {
		t.Errorf("password in %q", err)
	}
	if !errors.Is(err, base) {
		t.Error("the redacted error lost its chain")
	}
	if redact.Error(nil) != nil {
		t.Error("Error(nil) is not nil")
	}
}
