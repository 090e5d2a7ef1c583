package download

import (
	"hash"
	"sync/atomic"
)

// hashPipe hashes chunks off the reading goroutine so that hashing overlaps
// network reads and file writes. Each hash has its own goroutine (SHA-512 is
// four times slower than SHA-256 here, and both run when a sha512 digest is
// expected). Buffers circulate through a fixed ring: the producer takes a
// free chunk, fills it and submits it; the last hasher to finish with it
// returns it. Memory is nbuf*size whatever the file size.
type hashPipe struct {
	hashes []hash.Hash
	free   chan *chunk
	work   []chan *chunk // one per hash
	done   chan struct{}
	nbuf   int
}

// chunk is one buffer of the ring.
type chunk struct {
	buf     []byte
	n       int          // bytes of buf to hash
	pending atomic.Int32 // hashers yet to finish with it
}

func newHashPipe(nbuf, size int, hashes ...hash.Hash) *hashPipe {
	p := &hashPipe{
		hashes: hashes,
		free:   make(chan *chunk, nbuf),
		done:   make(chan struct{}, len(hashes)),
		nbuf:   nbuf,
	}
	for range nbuf {
		p.free <- &chunk{buf: make([]byte, size)}
	}
	for _, h := range hashes {
		// Room for every chunk: submit never blocks on a slow hasher.
		w := make(chan *chunk, nbuf)
		p.work = append(p.work, w)
		go p.run(h, w)
	}
	return p
}

func (p *hashPipe) run(h hash.Hash, work <-chan *chunk) {
	for c := range work {
		h.Write(c.buf[:c.n]) // hash.Hash.Write never fails
		if c.pending.Add(-1) == 0 {
			p.free <- c
		}
	}
	p.done <- struct{}{}
}

// get returns a free chunk, waiting for the hashers if all are in flight.
func (p *hashPipe) get() *chunk { return <-p.free }

// put returns an unused chunk.
func (p *hashPipe) put(c *chunk) { p.free <- c }

// submit queues the first n bytes of c for hashing; c must not be touched
// until get returns it again.
func (p *hashPipe) submit(c *chunk, n int) {
	if n == 0 {
		p.put(c)
		return
	}
	c.n = n
	c.pending.Store(int32(len(p.work)))
	for _, w := range p.work {
		w <- c
	}
}

// sync waits until every submitted chunk is hashed, so that the hashes may be
// read or reset. It must not be called while the caller holds a chunk.
func (p *hashPipe) sync() {
	held := make([]*chunk, 0, p.nbuf)
	for range p.nbuf {
		held = append(held, <-p.free)
	}
	for _, c := range held {
		p.free <- c
	}
}

// reset syncs and resets every hash.
func (p *hashPipe) reset() {
	p.sync()
	for _, h := range p.hashes {
		h.Reset()
	}
}

// close stops the hashing goroutines after they drain.
func (p *hashPipe) close() {
	for _, w := range p.work {
		close(w)
	}
	for range p.work {
		<-p.done
	}
}
