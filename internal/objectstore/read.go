package objectstore

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
)

// Open streams the object version info (from Stat) in order. The reader
// returns ErrNotFound if that version is deleted or replaced while it is
// being read, ErrStalled if no chunk arrives within the stall timeout, and
// ErrDigestMismatch at the end if the bytes do not match the writer's digest
// or size. About two Windows of chunks are buffered.
//
// The chunks are read by batched direct gets (nats-server 2.11+: one request
// answers up to Window messages of the chunk subject from a sequence on,
// then a "204 EOB" status), not by a consumer: a reader needs no right to
// create consumers, which would let it make the server deliver a stream's
// messages onto any subject. The next batch is asked for as soon as one
// ends, while the reader still works through it.
func (s *Store) Open(ctx context.Context, info Info) (io.ReadCloser, error) {
	if info.NUID == "" {
		return nil, fmt.Errorf("%s/%s: no object version: %w", s.bucket, info.Name, ErrNotFound)
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &reader{s: s, info: info, ctx: ctx, cancel: cancel, h: sha256.New()}
	if info.Size == 0 {
		return r, nil
	}
	nc := s.js.Conn()
	r.inbox = nc.NewInbox()
	r.msgs = make(chan *nats.Msg, 2*s.window+2)
	sub, err := nc.Subscribe(r.inbox, r.reply)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("read %s/%s: %w", s.bucket, info.Name, err)
	}
	r.sub = sub
	if err := r.ask(1); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

type reader struct {
	s      *Store
	info   Info
	ctx    context.Context
	cancel context.CancelFunc
	inbox  string
	sub    *nats.Subscription
	// msgs carries the replies to the reader, in order.
	msgs chan *nats.Msg
	// next is the sequence after the last chunk that arrived (reply's side).
	mu   sync.Mutex
	next uint64
	// from is the sequence after the last chunk taken (Read's side).
	from   uint64
	h      hash.Hash
	buf    []byte
	read   int64
	chunks uint32
	err    error
}

func (r *reader) Read(p []byte) (int, error) {
	if r.err != nil {
		return 0, r.err
	}
	for len(r.buf) == 0 {
		if r.read >= r.info.Size {
			r.err = r.finish()
			return 0, r.err
		}
		if err := r.nextChunk(); err != nil {
			r.err = err
			return 0, err
		}
	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// directBatch is the body of a batched direct get (nats-server's
// JSApiMsgGetRequest): up to Batch messages of NextFor from Seq on.
type directBatch struct {
	Seq     uint64 `json:"seq"`
	NextFor string `json:"next_by_subj"`
	Batch   int    `json:"batch"`
}

// ask requests the batch of chunks from sequence from on.
func (r *reader) ask(from uint64) error {
	body, err := json.Marshal(directBatch{Seq: from, NextFor: r.s.chunkSubject(r.info.NUID), Batch: r.s.window})
	if err != nil {
		return err
	}
	if err := r.s.js.Conn().PublishRequest("$JS.API.DIRECT.GET."+StreamName(r.s.bucket), r.inbox, body); err != nil {
		return fmt.Errorf("read %s/%s at byte %d: %w", r.s.bucket, r.info.Name, r.read, err)
	}
	return nil
}

// reply takes each reply on the subscription's goroutine: it asks for the
// next batch when one ends with more chunks pending, and hands every reply
// on to Read (waiting while Read is two batches behind).
func (r *reader) reply(m *nats.Msg) {
	switch m.Header.Get("Status") {
	case "":
		if seq, err := strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64); err == nil {
			r.mu.Lock()
			r.next = max(r.next, seq+1)
			r.mu.Unlock()
		}
	case "204":
		r.mu.Lock()
		next := r.next
		r.mu.Unlock()
		if m.Header.Get("Nats-Num-Pending") != "0" {
			_ = r.ask(next) // a lost request is asked again by wait
		}
	}
	select {
	case r.msgs <- m:
	case <-r.ctx.Done():
	}
}

// nextChunk waits for the next chunk, at most the stall timeout.
func (r *reader) nextChunk() error {
	for {
		m, err := r.wait()
		if err != nil {
			return err
		}
		switch status := m.Header.Get("Status"); status {
		case "":
			if taken, err := r.chunk(m); taken || err != nil {
				return err
			}
		case "204": // end of a batch: the next is asked for unless none is pending
			if m.Header.Get("Nats-Num-Pending") == "0" {
				return r.short()
			}
		case "404": // no chunk at or after the sequence asked for
			return r.short()
		default:
			return fmt.Errorf("read %s/%s at byte %d: server answered %s %s", r.s.bucket, r.info.Name, r.read, status, m.Header.Get("Description"))
		}
	}
}

// wait returns the next reply. While waiting, it looks now and then whether
// this version still exists (a deleted or replaced object's chunks never
// come), and asks again from where Read is (a reply lost to a reconnect
// never comes; what arrives twice is skipped by sequence).
func (r *reader) wait() (*nats.Msg, error) {
	select {
	case m := <-r.msgs:
		return m, nil
	default:
	}
	deadline := time.Now().Add(r.s.stall)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case m := <-r.msgs:
			return m, nil
		case <-tick.C:
			if cur, err := r.s.Stat(r.ctx, digestOf(r.info)); errors.Is(err, ErrNotFound) || (err == nil && cur.NUID != r.info.NUID) {
				return nil, fmt.Errorf("read %s/%s: the object was deleted or replaced while reading: %w", r.s.bucket, r.info.Name, ErrNotFound)
			}
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("read %s/%s: %w: no data for %s at byte %d", r.s.bucket, r.info.Name, ErrStalled, r.s.stall, r.read)
			}
			if len(r.msgs) == 0 {
				if err := r.ask(max(r.from, 1)); err != nil {
					return nil, err
				}
			}
		case <-r.ctx.Done():
			return nil, r.ctx.Err()
		}
	}
}

// chunk takes one chunk of a batch; one already taken is skipped.
func (r *reader) chunk(m *nats.Msg) (bool, error) {
	seq, err := strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
	if err != nil {
		return false, fmt.Errorf("read %s/%s at byte %d: a chunk with sequence %q", r.s.bucket, r.info.Name, r.read, m.Header.Get("Nats-Sequence"))
	}
	if seq < r.from {
		return false, nil
	}
	r.from = seq + 1
	data := m.Data
	if int64(len(data)) > r.info.Size-r.read {
		return false, fmt.Errorf("read %s/%s: chunks hold more than the recorded %d bytes: %w", r.s.bucket, r.info.Name, r.info.Size, ErrDigestMismatch)
	}
	r.h.Write(data)
	r.read += int64(len(data))
	r.chunks++
	r.buf = data
	return true, nil
}

// short answers running out of stored chunks before the recorded size: the
// object was purged (deleted or replaced) while we read it, or is short.
func (r *reader) short() error {
	if _, err := r.s.Stat(r.ctx, digestOf(r.info)); errors.Is(err, ErrNotFound) {
		return fmt.Errorf("read %s/%s: deleted while reading: %w", r.s.bucket, r.info.Name, ErrNotFound)
	}
	return fmt.Errorf("read %s/%s: %d of %d bytes stored: %w", r.s.bucket, r.info.Name, r.read, r.info.Size, ErrDigestMismatch)
}

func (r *reader) finish() error {
	if r.info.SHA256.Hex != "" && fmt.Sprintf("%x", r.h.Sum(nil)) != r.info.SHA256.Hex {
		return fmt.Errorf("read %s/%s: content does not match the object's recorded digest: %w", r.s.bucket, r.info.Name, ErrDigestMismatch)
	}
	return io.EOF
}

func (r *reader) Close() error {
	r.cancel() // first: a reply waiting to be handed on gives up
	if r.sub != nil {
		_ = r.sub.Unsubscribe()
	}
	return nil
}
