package stage

import (
	"context"
	"sync"
)

// A handler that must wait for something another handler (or another
// process) is doing — the one download of an asset that several requests
// need — would hold one of the runner's slots for nothing while it waits,
// and enough such waiters stop the stage from taking any other work. Idle
// lends the slot out: while wait runs, another worker pulls in its place.

// slots tracks the runner's workers against its concurrency and the slots
// lent out by idle handlers.
type slots struct {
	mu       sync.Mutex
	wg       sync.WaitGroup
	workers  int // worker goroutines running
	lent     int // handlers inside Idle
	limit    int // the runner's concurrency
	spawn    func()
	spawning bool // Run has started: spare workers may be started
}

// surplus reports, for a worker about to pull, whether it should stop
// instead: more workers run than the concurrency plus the lent slots. It
// counts the worker out when it says so.
func (s *slots) surplus() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.workers > s.limit+s.lent {
		s.workers--
		return true
	}
	return false
}

// lend marks one slot lent and starts a spare worker if one is missing.
func (s *slots) lend() {
	s.mu.Lock()
	s.lent++
	start := s.spawning && s.workers < s.limit+s.lent
	if start {
		s.workers++
		s.wg.Add(1)
	}
	s.mu.Unlock()
	if start {
		go s.spawn()
	}
}

// giveBack ends a loan; a spare worker stops after its current message.
func (s *slots) giveBack() {
	s.mu.Lock()
	s.lent--
	s.mu.Unlock()
}

type slotsKey struct{}

// Idle runs wait — a wait for work done elsewhere, not work itself — with
// the calling handler's slot lent to another worker, so that waiters never
// keep the stage from its other messages; the handler's message stays in
// progress. After wait returns the handler continues (the runner may run
// one more message than its concurrency until a spare worker finishes).
// Outside a Runner's handler, Idle just calls wait.
func Idle(ctx context.Context, wait func() error) error {
	s, _ := ctx.Value(slotsKey{}).(*slots)
	if s == nil {
		return wait()
	}
	s.lend()
	defer s.giveBack()
	return wait()
}
