package download

import "os"

// writebackChunk is how much newly written data makes us ask the kernel to
// start writing it to disk. Doing so during the download leaves little for
// the final fsync, which would otherwise flush the whole file at the end.
const writebackChunk = 32 << 20

// writeback starts asynchronous writeback of written ranges on its own
// goroutine, so that a congested disk queue never blocks network reads.
type writeback struct {
	f      *os.File
	ranges chan [2]int64 // offset, length
	done   chan struct{}
	sent   int64 // end of the last range handed over
}

func newWriteback(f *os.File) *writeback {
	w := &writeback{f: f, ranges: make(chan [2]int64, 1), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for r := range w.ranges {
			startWriteback(w.f, r[0], r[1])
		}
	}()
	return w
}

// written notes that the file now holds end bytes; it never blocks.
func (w *writeback) written(end int64) {
	if end < w.sent { // the file was truncated
		w.sent = 0
	}
	if end-w.sent < writebackChunk {
		return
	}
	select {
	case w.ranges <- [2]int64{w.sent, end - w.sent}:
		w.sent = end
	default: // still busy with the previous range; the next call covers this one too
	}
}

func (w *writeback) close() {
	close(w.ranges)
	<-w.done
}
