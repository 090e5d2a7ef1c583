package stage

import (
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestUnavailable(t *testing.T) {
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	live := context.Background()
	tests := []struct {
		name string
		ctx  context.Context
		err  error
		want bool
	}{
		{"nil", live, nil, false},
		{"call timed out", live, fmt.Errorf("stage healer: create consumer on VMPREP_WORK: %w", context.DeadlineExceeded), true},
		{"nats timeout", live, nats.ErrTimeout, true},
		{"no responders", live, fmt.Errorf("stream info: %w", nats.ErrNoResponders), true},
		{"reconnecting", live, nats.ErrConnectionReconnecting, true},
		{"jetstream unavailable", live, &jetstream.APIError{Code: 503, ErrorCode: 10008, Description: "JetStream system temporarily unavailable"}, true},
		{"no peers", live, &jetstream.APIError{Code: 400, ErrorCode: errCodeNoPeers, Description: "no suitable peers for placement"}, true},
		{"server timeout", live, &jetstream.APIError{Code: 408}, true},
		{"configuration refused", live, &jetstream.APIError{Code: 400, ErrorCode: 10058, Description: "stream name already in use with a different configuration"}, false},
		{"create denied", live, fmt.Errorf("consumer x: %w", ErrCreateDenied), false},
		{"drift", live, &DriftError{Stream: "S", Consumer: "c", Drift: []string{"filter"}}, false},
		{"drift wrapping a timeout", live, fmt.Errorf("%w: %w", &DriftError{Stream: "S", Consumer: "c"}, context.DeadlineExceeded), false},
		{"plain error", live, errors.New("unknown stage \"x\""), false},
		{"caller's context ended", ended, context.DeadlineExceeded, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := Unavailable(tt.ctx, tt.err); got != tt.want {
				t.Errorf("Unavailable(%v) = %v, want %v", tt.err, got, tt.want)
			}
		})
	}
}
