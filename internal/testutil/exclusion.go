package testutil

import (
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/vmprep/vmprep/internal/stage"
)

// MutualExclusion has workers goroutines each take a lock rounds times —
// lock(worker, round) takes it and returns its unlock — and fails tb if a
// holder ever finds another holder inside.
func MutualExclusion(tb testing.TB, workers, rounds int, lock func(worker, round int) (unlock func() error, err error)) {
	tb.Helper()
	var inside, overlaps, entries atomic.Int64
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range rounds {
				unlock, err := lock(w, i)
				if err != nil {
					tb.Error(err)
					return
				}
				if inside.Add(1) != 1 {
					overlaps.Add(1)
				}
				entries.Add(1)
				runtime.Gosched() // give an intruder the chance to show
				inside.Add(-1)
				if err := unlock(); err != nil {
					tb.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	if n := overlaps.Load(); n != 0 {
		tb.Errorf("%d of %d lock holders overlapped another", n, entries.Load())
	}
}

// Backoff returns a retry policy for stage runners (stage.WithBackoff) with
// short intervals, so that tests of retries end quickly.
func Backoff(initial, maxInterval time.Duration) func() backoff.BackOff {
	return func() backoff.BackOff { return stage.Exponential(initial, maxInterval, 0.5) }
}
