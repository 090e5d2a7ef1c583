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
	"time"

	"github.com/nats-io/nats.go"
)

// Open streams the object version info (from Stat) in order. The reader
// returns ErrNotFound if that version is deleted or replaced while it is
// being read, ErrStalled if no chunk arrives within the stall timeout, and
// ErrDigestMismatch at the end if the bytes do not match the writer's digest
// or size. At most Window chunks are asked for at a time.
//
// The chunks are read by batched direct gets (nats-server 2.11+: one request
// answers up to Window messages of the chunk subject, then an end-of-batch
// status), not by a consumer: a reader needs no right to create consumers,
// which would let it make the server deliver to any subject.
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
	// Room for a whole batch and its end: a full channel would drop chunks.
	r.msgs = make(chan *nats.Msg, s.window+2)
	sub, err := nc.ChanSubscribe(r.inbox, r.msgs)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("read %s/%s: %w", s.bucket, info.Name, err)
	}
	r.sub = sub
	return r, nil
}

type reader struct {
	s      *Store
	info   Info
	ctx    context.Context
	cancel context.CancelFunc
	inbox  string
	sub    *nats.Subscription
	msgs   chan *nats.Msg
	// asked says a batch is under way; from is the stream sequence the next
	// batch starts at.
	asked  bool
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
		if err := r.next(); err != nil {
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

// ask requests the next batch of chunks.
func (r *reader) ask() error {
	body, err := json.Marshal(directBatch{Seq: r.from, NextFor: r.s.chunkSubject(r.info.NUID), Batch: r.s.window})
	if err != nil {
		return err
	}
	if err := r.s.js.Conn().PublishRequest("$JS.API.DIRECT.GET."+StreamName(r.s.bucket), r.inbox, body); err != nil {
		return fmt.Errorf("read %s/%s at byte %d: %w", r.s.bucket, r.info.Name, r.read, err)
	}
	r.asked = true
	return nil
}

// next waits for the next chunk, at most the stall timeout, asking for the
// next batch when one ends.
func (r *reader) next() error {
	for {
		if !r.asked {
			if err := r.ask(); err != nil {
				return err
			}
		}
		m, err := r.wait()
		if err != nil {
			return err
		}
		switch status := m.Header.Get("Status"); status {
		case "":
			if taken, err := r.chunk(m); taken || err != nil {
				return err
			}
		case "204": // end of batch
			r.asked = false
			if m.Header.Get("Nats-Num-Pending") == "0" {
				return r.short()
			}
		case "404": // no chunk at or after r.from
			r.asked = false
			return r.short()
		default:
			return fmt.Errorf("read %s/%s at byte %d: server answered %s %s", r.s.bucket, r.info.Name, r.read, status, m.Header.Get("Description"))
		}
	}
}

// wait returns the next reply to this reader's batches. While waiting, it
// looks now and then whether this version still exists: a deleted or
// replaced object's chunks never come.
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
			// A reply lost to a reconnect never comes: ask again (what
			// arrives twice is skipped by sequence).
			if err := r.ask(); err != nil {
				return nil, err
			}
		case <-r.ctx.Done():
			return nil, r.ctx.Err()
		}
	}
}

// chunk takes one chunk of a batch; one already taken (a batch asked for
// again, see wait) is skipped.
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
	if r.sub != nil {
		_ = r.sub.Unsubscribe()
	}
	r.cancel()
	return nil
}
