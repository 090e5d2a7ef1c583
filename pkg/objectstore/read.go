package objectstore

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"hash"
	"io"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Open streams the object version info (from Stat) in order. The reader
// returns ErrNotFound if that version is deleted or replaced while it is
// being read, ErrStalled if no chunk arrives within the stall timeout, and
// ErrDigestMismatch at the end if the bytes do not match the writer's digest
// or size. At most Window chunks are buffered.
func (s *Store) Open(ctx context.Context, info Info) (io.ReadCloser, error) {
	if info.NUID == "" {
		return nil, fmt.Errorf("%s/%s: no object version: %w", s.bucket, info.Name, ErrNotFound)
	}
	ctx, cancel := context.WithCancel(ctx)
	r := &reader{s: s, info: info, ctx: ctx, cancel: cancel, h: sha256.New()}
	if info.Size == 0 {
		return r, nil
	}
	cons, err := s.js.OrderedConsumer(ctx, StreamName(s.bucket), jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{s.chunkSubject(info.NUID)},
		DeliverPolicy:  jetstream.DeliverAllPolicy,
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("read %s/%s: %w", s.bucket, info.Name, err)
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(s.window))
	if err != nil {
		cancel()
		return nil, fmt.Errorf("read %s/%s: %w", s.bucket, info.Name, err)
	}
	r.it = it
	return r, nil
}

type reader struct {
	s      *Store
	info   Info
	ctx    context.Context
	cancel context.CancelFunc
	it     jetstream.MessagesContext
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

// next waits for the next chunk, at most the stall timeout.
func (r *reader) next() error {
	type result struct {
		m   jetstream.Msg
		err error
	}
	ch := make(chan result, 1)
	go func() {
		m, err := r.it.Next()
		ch <- result{m, err}
	}()
	// While waiting, look now and then whether this version still exists:
	// a deleted or replaced object's chunks never come.
	deadline := time.Now().Add(r.s.stall)
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	var res result
wait:
	for {
		select {
		case res = <-ch:
			break wait
		case <-tick.C:
			if cur, err := r.s.Stat(r.ctx, digestOf(r.info)); errors.Is(err, ErrNotFound) || (err == nil && cur.NUID != r.info.NUID) {
				r.it.Stop()
				return fmt.Errorf("read %s/%s: the object was deleted or replaced while reading: %w", r.s.bucket, r.info.Name, ErrNotFound)
			}
			if time.Now().After(deadline) {
				r.it.Stop()
				return fmt.Errorf("read %s/%s: %w: no data for %s at byte %d", r.s.bucket, r.info.Name, ErrStalled, r.s.stall, r.read)
			}
		case <-r.ctx.Done():
			r.it.Stop()
			return r.ctx.Err()
		}
	}
	if res.err != nil {
		if r.ctx.Err() != nil {
			return r.ctx.Err()
		}
		return fmt.Errorf("read %s/%s at byte %d: %w", r.s.bucket, r.info.Name, r.read, res.err)
	}
	data := res.m.Data()
	if int64(len(data)) > r.info.Size-r.read {
		return fmt.Errorf("read %s/%s: chunks hold more than the recorded %d bytes: %w", r.s.bucket, r.info.Name, r.info.Size, ErrDigestMismatch)
	}
	r.h.Write(data)
	r.read += int64(len(data))
	r.chunks++
	r.buf = data
	if md, err := res.m.Metadata(); err == nil && md.NumPending == 0 && r.read < r.info.Size {
		// The last stored chunk arrived but the object is short: it was
		// purged (deleted or replaced) while we read it.
		if _, err := r.s.Stat(r.ctx, digestOf(r.info)); errors.Is(err, ErrNotFound) {
			return fmt.Errorf("read %s/%s: deleted while reading: %w", r.s.bucket, r.info.Name, ErrNotFound)
		}
		return fmt.Errorf("read %s/%s: %d of %d bytes stored: %w", r.s.bucket, r.info.Name, r.read, r.info.Size, ErrDigestMismatch)
	}
	return nil
}

func (r *reader) finish() error {
	if r.info.SHA256.Hex != "" && fmt.Sprintf("%x", r.h.Sum(nil)) != r.info.SHA256.Hex {
		return fmt.Errorf("read %s/%s: content does not match the object's recorded digest: %w", r.s.bucket, r.info.Name, ErrDigestMismatch)
	}
	return io.EOF
}

func (r *reader) Close() error {
	if r.it != nil {
		r.it.Stop()
	}
	r.cancel()
	return nil
}
