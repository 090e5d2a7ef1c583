package download

import (
	"hash"
)

// hashPipe hashes chunks on a separate goroutine so that hashing overlaps
// network reads and file writes. Buffers circulate through a fixed ring: the
// producer takes a free buffer, fills it, submits it; the hashing goroutine
// returns it when done. Memory is nbuf*size whatever the file size.
type hashPipe struct {
	hashes []hash.Hash
	free   chan []byte
	work   chan []byte
	done   chan struct{}
	nbuf   int
}

func newHashPipe(nbuf, size int, hashes ...hash.Hash) *hashPipe {
	p := &hashPipe{
		hashes: hashes,
		free:   make(chan []byte, nbuf),
		work:   make(chan []byte, nbuf),
		done:   make(chan struct{}),
		nbuf:   nbuf,
	}
	for range nbuf {
		p.free <- make([]byte, size)
	}
	go p.run()
	return p
}

func (p *hashPipe) run() {
	defer close(p.done)
	for b := range p.work {
		for _, h := range p.hashes {
			h.Write(b) // hash.Hash.Write never fails
		}
		p.free <- b[:cap(b)]
	}
}

// get returns an empty full-length buffer, waiting for the hasher if all are in flight.
func (p *hashPipe) get() []byte { return <-p.free }

// put returns an unused buffer.
func (p *hashPipe) put(b []byte) { p.free <- b[:cap(b)] }

// submit queues b for hashing; b must not be touched until get returns it again.
func (p *hashPipe) submit(b []byte) {
	if len(b) == 0 {
		p.put(b)
		return
	}
	p.work <- b
}

// sync waits until every submitted chunk is hashed, so that the hashes may be
// read or reset. It must not be called while the caller holds a buffer.
func (p *hashPipe) sync() {
	held := make([][]byte, 0, p.nbuf)
	for range p.nbuf {
		held = append(held, <-p.free)
	}
	for _, b := range held {
		p.free <- b
	}
}

// reset syncs and resets every hash.
func (p *hashPipe) reset() {
	p.sync()
	for _, h := range p.hashes {
		h.Reset()
	}
}

// close stops the hashing goroutine after it drains.
func (p *hashPipe) close() {
	close(p.work)
	<-p.done
}
