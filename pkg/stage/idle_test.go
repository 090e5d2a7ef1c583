package stage_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/vmprep/vmprep/pkg/stage"
)

// A handler waiting in Idle lends its slot: with one slot, messages behind
// a waiter are handled while it waits, and the waiter finishes afterwards.
func TestIdleLendsTheSlot(t *testing.T) {
	t.Parallel()
	js := startJS(t)
	release := make(chan struct{})
	handled := make(chan string, 10)
	runRunner(t, js, func(ctx context.Context, m stage.Message) ([]stage.Event, error) {
		if strings.HasPrefix(string(m.Data), "wait") {
			if err := stage.Idle(ctx, func() error {
				select {
				case <-release:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}); err != nil {
				return nil, err
			}
		}
		handled <- string(m.Data)
		return nil, nil
	}, stage.WithConcurrency(1))

	publish(t, js, "wait-1", "wait-2", "work-1", "work-2")
	for _, want := range []string{"work-1", "work-2"} {
		select {
		case got := <-handled:
			if got != want {
				t.Fatalf("handled %s, want %s first: the waiters are still waiting", got, want)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s was not handled while two handlers waited in Idle with the runner's one slot", want)
		}
	}
	close(release)
	for range 2 {
		select {
		case got := <-handled:
			if !strings.HasPrefix(got, "wait") {
				t.Fatalf("handled %s, want a waiter", got)
			}
		case <-time.After(30 * time.Second):
			t.Fatal("a waiter did not finish after its wait ended")
		}
	}
}
