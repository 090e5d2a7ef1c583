package ops

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go/jetstream"
)

// scan reads the messages of stream on subject (wildcards allowed) in order,
// without a consumer (a work-queue stream allows no second consumer over its
// subjects), calling fn until it returns false. It stops after limit
// messages and then reports truncated.
func scan(ctx context.Context, s jetstream.Stream, subject string, limit int, fn func(*jetstream.RawStreamMsg) bool) (truncated bool, err error) {
	seq := uint64(1)
	for n := 0; ; n++ {
		if n >= limit {
			return true, nil
		}
		m, err := s.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		if !fn(m) {
			return false, nil
		}
		seq = m.Sequence + 1
	}
}
