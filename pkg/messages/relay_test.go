package messages_test

import (
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/vmprep/vmprep/pkg/messages"
)

// TestHeaderWhole: the header blocks nats.go and nats-server write are read
// whole; a block made by hand that hides lines from nats.go's parser is not.
func TestHeaderWhole(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		block string // "" = no header block
		whole bool
	}{
		{"no headers", "", true},
		{"empty block", "NATS/1.0\r\n\r\n", true},
		{"a publisher's marker", "NATS/1.0\r\nVmprep-Writer: resolver\r\n\r\n", true},
		{"a direct get's answer (server format)", "NATS/1.0\r\nVmprep-Writer: operator\r\nNats-Stream: KV_X\r\nNats-Subject: $KV.X.k\r\nNats-Sequence: 3\r\nNats-Time-Stamp: 2026-01-01T00:00:00Z\r\n\r\n", true},
		{"repeated key", "NATS/1.0\r\nNats-Stream: A\r\nNats-Stream: B\r\n\r\n", true},
		{"blank line hides the server's markings", "NATS/1.0\r\nVmprep-Writer: resolver\r\n\r\nNats-Stream: KV_Y\r\nNats-Subject: $KV.Y.lease\r\n\r\n", false},
		{"blank line at the end", "NATS/1.0\r\nVmprep-Writer: resolver\r\n\r\n\r\n", false},
		{"no space after the colon", "NATS/1.0\r\nVmprep-Writer:resolver\r\n\r\n", false},
		{"line feeds alone", "NATS/1.0\nVmprep-Writer: resolver\n\n", false},
		{"an empty key skipped by the parser", "NATS/1.0\r\n: hidden\r\nVmprep-Writer: resolver\r\n\r\n", false},
		{"inline status", "NATS/1.0 404 Message Not Found\r\n\r\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var h nats.Header
			if tc.block != "" {
				var err error
				if h, err = nats.DecodeHeadersMsg([]byte(tc.block)); err != nil {
					t.Fatalf("nats.go cannot read the block: %v", err)
				}
			}
			if got := messages.HeaderWhole(h, len(tc.block)); got != tc.whole {
				t.Errorf("HeaderWhole = %v, want %v (parsed %v)", got, tc.whole, h)
			}
		})
	}
}
