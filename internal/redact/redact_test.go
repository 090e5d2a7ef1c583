package redact_test

import (
	"errors"
	"fmt"
	"net/url"
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

// TestURLsPasswordCharacters: a password may hold any of "@ / # : %" (and
// a URL escapes some of them, or not). Before, a password with "@" leaked
// what followed it, and one with "/" or "#" was logged whole.
func TestURLsPasswordCharacters(t *testing.T) {
	for _, sep := range []string{"@", "/", "#", ":", "%", "%40", "%2F", "?", "@/#:%"} {
		pw := "S3cr" + sep + "etX"
		for _, in := range []string{
			"nats://alice:" + pw + "@nats1:4222",
			"tls://alice:" + pw + "@nats1:4222,nats://bob:" + pw + "@nats2:4222",
			"ws://" + pw + "@nats1:443",
			fmt.Sprintf("connect to NATS at %q: parse error", "nats://alice:"+pw+"@nats1:4222"),
			"nats-route://route:" + pw + "@nats1:6222 refused",
		} {
			got := redact.URLs(in)
			if strings.Contains(got, "S3cr") || strings.Contains(got, "etX") {
				t.Errorf("URLs(%q) = %q: the password leaks", in, got)
			}
			if !strings.Contains(got, "REDACTED@nats1:") {
				t.Errorf("URLs(%q) = %q: the host is lost", in, got)
			}
		}
	}
	// What nats.go takes from such a URL is exactly what is redacted: the
	// user info ends at its last "@".
	in := "nats://alice:p%40ss@nats1:4222"
	u, err := url.Parse(in)
	if err != nil || u.Host != "nats1:4222" {
		t.Fatalf("url.Parse(%q): host %v, %v", in, u, err)
	}
	if got := redact.URLs(in); got != "nats://REDACTED@"+u.Host {
		t.Errorf("URLs(%q) = %q", in, got)
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
