package objectstore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// deleteChunks deletes the chunk messages of object version nuid one at a
// time ($JS.API.STREAM.MSG.DELETE), returning how many it deleted. A purge
// by subject would be one call, but the right to purge is the right to
// purge the whole bucket (the filter travels in the request body, which
// NATS permissions cannot see); the right to delete a message by sequence
// can only ever remove that message.
func (s *Store) deleteChunks(ctx context.Context, nuid string) (int, error) {
	subj := s.chunkSubject(nuid)
	deleted := 0
	for seq := uint64(1); ; {
		next, err := s.nextSeq(ctx, subj, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return deleted, nil
		}
		if err != nil {
			return deleted, fmt.Errorf("find chunks of %s: %w", nuid, err)
		}
		if err := s.stream.DeleteMsg(ctx, next); err != nil && !errors.Is(err, jetstream.ErrMsgDeleteUnsuccessful) {
			// Unsuccessful: already gone (another deleter got there first).
			return deleted, fmt.Errorf("delete chunk %d of %s: %w", next, nuid, err)
		}
		deleted++
		seq = next + 1
	}
}

// msgGetRequest is JetStream's STREAM.MSG.GET request: the first message
// at or after Seq on NextBySubj.
type msgGetRequest struct {
	Seq        uint64 `json:"seq"`
	NextBySubj string `json:"next_by_subj"`
}

type msgGetResponse struct {
	Error   *jetstream.APIError `json:"error,omitempty"`
	Message *struct {
		Sequence uint64 `json:"seq"`
	} `json:"message,omitempty"`
}

// nextSeq is the sequence of the first message on subj at or after from.
// It asks STREAM.MSG.GET itself: the library's GetMsg turns into a direct
// get on this bucket (AllowDirect), whose by-sequence form
// ($JS.API.DIRECT.GET.<stream>) the deployment grants nobody but admin.
func (s *Store) nextSeq(ctx context.Context, subj string, from uint64) (uint64, error) {
	req, err := json.Marshal(msgGetRequest{Seq: from, NextBySubj: subj})
	if err != nil {
		return 0, err
	}
	prefix := s.js.Options().APIPrefix
	if prefix == "" {
		prefix = jetstream.DefaultAPIPrefix
	}
	if !strings.HasSuffix(prefix, ".") {
		prefix += "."
	}
	rctx, cancel := ctx, context.CancelFunc(func() {})
	if _, ok := ctx.Deadline(); !ok {
		rctx, cancel = context.WithTimeout(ctx, s.stall)
	}
	defer cancel()
	m, err := s.js.Conn().RequestWithContext(rctx, prefix+"STREAM.MSG.GET."+StreamName(s.bucket), req)
	if err != nil {
		return 0, err
	}
	var resp msgGetResponse
	if err := json.Unmarshal(m.Data, &resp); err != nil {
		return 0, fmt.Errorf("unreadable STREAM.MSG.GET answer: %w", err)
	}
	if resp.Error != nil {
		if resp.Error.ErrorCode == jetstream.JSErrCodeMessageNotFound {
			return 0, jetstream.ErrMsgNotFound
		}
		return 0, resp.Error
	}
	if resp.Message == nil {
		return 0, fmt.Errorf("STREAM.MSG.GET answered no message")
	}
	return resp.Message.Sequence, nil
}

// Orphan is a set of chunks that no object meta references: what a put
// interrupted before its meta message (a node lost, a process killed)
// leaves behind.
type Orphan struct {
	NUID   string
	Chunks uint64
	// Last is when its newest chunk was stored.
	Last time.Time
}

// Sweep deletes orphaned chunks: chunk subjects ($O.<bucket>.C.<nuid>)
// that no object's meta names and whose newest chunk is older than grace.
// A put in progress stores a chunk at least every stall timeout (or gives
// up and deletes its own), so a grace well above the stall timeout never
// touches one; the meta is looked up again just before deleting, for a put
// that completed meanwhile. It returns what it deleted.
func (s *Store) Sweep(ctx context.Context, grace time.Duration) ([]Orphan, error) {
	if grace < s.stall {
		return nil, fmt.Errorf("sweep %s: grace %s is under the put stall timeout %s: a put in progress could be taken for an orphan", s.bucket, grace, s.stall)
	}
	chunkPrefix := "$O." + s.bucket + ".C."
	info, err := s.stream.Info(ctx, jetstream.WithSubjectFilter(chunkPrefix+">"))
	if err != nil {
		return nil, fmt.Errorf("sweep %s: list chunks: %w", s.bucket, err)
	}
	referenced, err := s.referenced(ctx)
	if err != nil {
		return nil, err
	}
	var candidates []Orphan
	for subj, n := range info.State.Subjects {
		id := strings.TrimPrefix(subj, chunkPrefix)
		if referenced[id] {
			continue
		}
		last, err := s.stream.GetLastMsgForSubject(ctx, subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("sweep %s: chunks of %s: %w", s.bucket, id, err)
		}
		if time.Since(last.Time) < grace {
			continue // maybe a put in progress
		}
		candidates = append(candidates, Orphan{NUID: id, Chunks: n, Last: last.Time})
	}
	if len(candidates) == 0 {
		return nil, nil
	}
	if referenced, err = s.referenced(ctx); err != nil {
		return nil, err
	}
	var swept []Orphan
	for _, o := range candidates {
		if referenced[o.NUID] {
			continue
		}
		if _, err := s.deleteChunks(ctx, o.NUID); err != nil {
			return swept, fmt.Errorf("sweep %s: %w", s.bucket, err)
		}
		s.log.Info("deleted orphaned chunks", "bucket", s.bucket, "nuid", o.NUID, "chunks", o.Chunks, "last_chunk", o.Last)
		swept = append(swept, o)
	}
	return swept, nil
}

// referenced is the set of object versions (NUIDs) that live metas name.
func (s *Store) referenced(ctx context.Context) (map[string]bool, error) {
	info, err := s.stream.Info(ctx, jetstream.WithSubjectFilter("$O."+s.bucket+".M.>"))
	if err != nil {
		return nil, fmt.Errorf("sweep %s: list objects: %w", s.bucket, err)
	}
	out := make(map[string]bool, len(info.State.Subjects))
	for subj := range info.State.Subjects {
		m, err := s.stream.GetLastMsgForSubject(ctx, subj)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("sweep %s: object meta %s: %w", s.bucket, subj, err)
		}
		var oi jetstream.ObjectInfo
		if err := json.Unmarshal(m.Data, &oi); err != nil {
			// An unreadable meta references nothing we can name; never
			// guess, so keep everything until an operator looks.
			return nil, fmt.Errorf("sweep %s: unreadable object meta on %s: %w", s.bucket, subj, err)
		}
		if !oi.Deleted && oi.NUID != "" {
			out[oi.NUID] = true
		}
	}
	return out, nil
}
