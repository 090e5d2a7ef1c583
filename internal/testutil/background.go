package testutil

import (
	"context"
	"testing"
	"time"
)

// Background is a command's main function running in a goroutine for the
// rest of a test: the serve and stage tests run their commands in-process
// this way.
type Background struct {
	code   chan int
	cancel context.CancelFunc
}

// StartBackground runs run until the test ends. At cleanup its context is
// cancelled and it gets 30 s to return; when the test failed, log (the
// command's output) is logged under name.
func StartBackground(tb testing.TB, name string, log interface{ String() string }, run func(ctx context.Context) int) *Background {
	tb.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	b := &Background{code: make(chan int, 1), cancel: cancel}
	go func() { b.code <- run(ctx) }()
	tb.Cleanup(func() {
		cancel()
		select {
		case <-b.code:
		case <-time.After(30 * time.Second):
			tb.Errorf("%s did not stop", name)
		}
		if tb.Failed() {
			tb.Logf("%s output:\n%s", name, log.String())
		}
	})
	return b
}

// Stop cancels the command's context (as SIGTERM does).
func (b *Background) Stop() { b.cancel() }

// Exited reports the command's exit status if it has returned.
func (b *Background) Exited() (int, bool) {
	select {
	case c := <-b.code:
		b.code <- c // for the next caller and the cleanup
		return c, true
	default:
		return 0, false
	}
}

// Wait waits up to timeout for the command to return by itself.
func (b *Background) Wait(timeout time.Duration) (int, bool) {
	select {
	case c := <-b.code:
		b.code <- c
		return c, true
	case <-time.After(timeout):
		return 0, false
	}
}
