package ops

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/pkg/messages"
)

// DeadEntry is one stored dead letter.
type DeadEntry struct {
	// Seq is its sequence in VMPREP_DEAD: what dead show and replay take.
	Seq uint64 `json:"seq"`
	messages.DeadLetter
}

// ErrDeadLetterNotFound means no dead letter has the sequence asked for.
var ErrDeadLetterNotFound = errors.New("no such dead letter")

// ErrNotReplayable means a dead letter's original cannot be published again.
var ErrNotReplayable = errors.New("cannot be replayed")

// ErrAlreadyAnswered means the dead letter's request already has its one
// result, so running it again would change nothing.
var ErrAlreadyAnswered = errors.New("request already has a result")

func deadStream(ctx context.Context, js jetstream.JetStream) (jetstream.Stream, error) {
	s, err := js.Stream(ctx, messages.StreamDead)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, ErrNoDeployment
	}
	return s, err
}

func decodeDead(m *jetstream.RawStreamMsg) DeadEntry {
	e := DeadEntry{Seq: m.Sequence}
	if err := messages.Decode(m.Data, messages.TypeDeadLetter, &e.DeadLetter); err != nil {
		// Something else was published on a dead-letter subject: show it as such.
		e.DeadLetter = messages.DeadLetter{Subject: m.Subject, Reason: "unreadable dead letter: " + err.Error(), Data: m.Data, Size: len(m.Data), At: m.Time}
	}
	if e.Stage == "" {
		e.Stage = strings.TrimPrefix(m.Subject, messages.SubjectDeadPrefix)
	}
	return e
}

// DeadLetters lists up to limit dead letters, oldest first (optionally of
// one stage only); truncated says there are more.
func DeadLetters(ctx context.Context, js jetstream.JetStream, stage string, limit int) (entries []DeadEntry, truncated bool, err error) {
	s, err := deadStream(ctx, js)
	if err != nil {
		return nil, false, err
	}
	subject := messages.SubjectDeadPrefix + "*"
	if stage != "" {
		subject = messages.DeadSubject(stage)
	}
	truncated, err = scan(ctx, s, subject, limit, func(m *jetstream.RawStreamMsg) bool {
		entries = append(entries, decodeDead(m))
		return true
	})
	return entries, truncated, err
}

// GetDeadLetter reads the dead letter with sequence seq.
func GetDeadLetter(ctx context.Context, js jetstream.JetStream, seq uint64) (DeadEntry, error) {
	s, err := deadStream(ctx, js)
	if err != nil {
		return DeadEntry{}, err
	}
	m, err := s.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return DeadEntry{}, fmt.Errorf("%w: %d in %s (dead letters are kept 7 days)", ErrDeadLetterNotFound, seq, messages.StreamDead)
	}
	if err != nil {
		return DeadEntry{}, err
	}
	return decodeDead(m), nil
}

// Replayed says what Replay published.
type Replayed struct {
	Subject   string `json:"subject"`
	MsgID     string `json:"msg_id"`
	RequestID string `json:"request_id,omitempty"`
	// Duplicate: the same dead letter was replayed moments ago (within the
	// work stream's deduplication window) and this publish was dropped.
	Duplicate bool `json:"duplicate"`
}

// ReplayID is the Nats-Msg-Id a replay of the original with SHA-256 hex sum
// carries: the same dead letter replayed twice is one message.
func ReplayID(sum string) string { return "replay." + sum }

func isPrepare(subject string) bool {
	_, ok := messages.NamespaceOf(subject)
	return ok
}

// namespaceOfWork is the requester's namespace of a work message: from a
// prepare subject, or from the asset event it holds.
func namespaceOfWork(subject string, data []byte) string {
	if ns, ok := messages.NamespaceOf(subject); ok {
		return ns
	}
	var ev messages.AssetEvent
	if messages.Decode(data, messages.TypeAsset, &ev) == nil {
		return ev.Namespace
	}
	return ""
}

// Replay publishes the original of dead letter seq again on its original
// subject, once whatever made it fail has been fixed. It refuses an original
// that was truncated or is not work, and a request that already has its
// result (a request id has exactly one result: it would not change).
func Replay(ctx context.Context, js jetstream.JetStream, seq uint64) (Replayed, error) {
	e, err := GetDeadLetter(ctx, js, seq)
	if err != nil {
		return Replayed{}, err
	}
	switch {
	case e.Truncated:
		return Replayed{}, fmt.Errorf("dead letter %d %w: only the first %d of its %d bytes were kept", seq, ErrNotReplayable, len(e.Data), e.Size)
	case !isPrepare(e.Subject) && !strings.HasPrefix(e.Subject, "vmprep.asset."):
		return Replayed{}, fmt.Errorf("dead letter %d %w: its subject %q is not a work subject", seq, ErrNotReplayable, e.Subject)
	case len(e.Data) == 0 || len(e.SHA256) < 32:
		return Replayed{}, fmt.Errorf("dead letter %d %w: it holds no original message", seq, ErrNotReplayable)
	}
	r := Replayed{Subject: e.Subject, MsgID: ReplayID(e.SHA256[:32]), RequestID: e.RequestID}
	if r.RequestID == "" {
		r.RequestID, _ = messages.PeekRequestID(e.Data)
	}
	if r.RequestID != "" {
		ns := namespaceOfWork(e.Subject, e.Data)
		res, _, err := lastResult(ctx, js, ns, r.RequestID)
		if err != nil {
			return r, err
		}
		if res == nil {
			rec, err := requestRecordOf(ctx, js, ns, r.RequestID)
			if err != nil {
				return r, err
			}
			if rec != nil && rec.Final != nil {
				res = rec.Final
			}
		}
		if res != nil {
			how := string(res.Status)
			if res.Failure != nil {
				how += ": " + res.Failure.Error()
			}
			return r, fmt.Errorf("dead letter %d: %w: request %s is %s; a request id has one result, so ask again under a new request id", seq, ErrAlreadyAnswered, r.RequestID, how)
		}
	}
	ack, err := js.Publish(ctx, e.Subject, e.Data, jetstream.WithMsgID(r.MsgID))
	if err != nil {
		return r, fmt.Errorf("replay dead letter %d to %s: %w", seq, e.Subject, err)
	}
	r.Duplicate = ack.Duplicate
	return r, nil
}
