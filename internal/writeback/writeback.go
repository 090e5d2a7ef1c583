// Package writeback starts the kernel writing a file's dirty pages to disk
// while its writer goes on, so that disk I/O overlaps the work that produces
// the data (network reads, decompression) and the final fsync finds little
// left to do. It is only a hint: it never blocks the writer and never fails;
// the final fsync reports real errors. Where the system has no asynchronous
// writeback call (anything but Linux), it does nothing.
//
// The download engine and the qcow2 converter both use it; this is the one
// implementation.
package writeback

import (
	"os"
	"sync"
	"sync/atomic"
)

// Writeback asks for writeback of one file each time another `every` bytes
// have been written to it. The requests are made from a goroutine of its
// own: a congested disk queue never stalls the writers.
type Writeback struct {
	f       *os.File
	every   int64
	pending atomic.Int64
	kick    chan struct{}
	stop    chan struct{}
	done    chan struct{}
	once    sync.Once
	flush   func(f *os.File) error // Range(f, 0, 0); tests count calls
}

// Start returns a Writeback for f that asks for writeback whenever Wrote has
// been told of another `every` bytes (every ≤ 0: never). Close it before the
// final fsync.
func Start(f *os.File, every int64) *Writeback {
	w := &Writeback{
		f: f, every: every,
		kick: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{}),
		flush: func(f *os.File) error { return Range(f, 0, 0) },
	}
	go w.loop()
	return w
}

func (w *Writeback) loop() {
	defer close(w.done)
	for {
		select {
		case <-w.stop:
			return
		case <-w.kick:
			// The whole file: the pages already written back are skipped
			// cheaply, and writers that write out of order (the converter's
			// workers) need not say where.
			_ = w.flush(w.f)
		}
	}
}

// Wrote reports n more bytes written to the file, anywhere in it. It never
// blocks and is safe for concurrent use (also after Close, when it does
// nothing).
func (w *Writeback) Wrote(n int64) {
	if w.every <= 0 || n <= 0 {
		return
	}
	if w.pending.Add(n) < w.every {
		return
	}
	// Whoever resets the count sends the kick; a kick already queued covers
	// this one too, since each covers the whole file.
	if w.pending.Swap(0) < w.every {
		return
	}
	select {
	case w.kick <- struct{}{}:
	default:
	}
}

// Close stops asking for writeback and waits for a request in progress. It
// is idempotent. A kick queued but not started is dropped: the caller's
// fsync does that work now.
func (w *Writeback) Close() {
	w.once.Do(func() {
		close(w.stop)
		<-w.done
	})
}
