package stage

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/pkg/messages"
)

// ErrNotWriter means a message cannot be taken as written by anyone: it
// carries no writer marker or more than one, the server's relay markings
// (messages.Relayed), or a header block that hides part of itself
// (messages.HeaderWhole). A stream stores what the server publishes on a
// subject for someone else (the answer to a request naming the subject as
// reply subject) like any publication, and permissions cannot restrict
// reply subjects: only the marker, read from the whole stored block, says
// that the subject's own publisher wrote it.
var ErrNotWriter = errors.New("not marked by its writer")

// WithWriters lets the handler ask who wrote each message (Message.Writer):
// the runner reads it as stored, header block whole. A delivery does not
// give that block whole — nats.go stops at the first blank line and
// jetstream.Msg has no wire size — so the message is read again by its
// stream sequence (STREAM.MSG.GET, which answers with the stored header
// block as bytes); the runner's user needs $JS.API.STREAM.MSG.GET.<stream>.
func WithWriters() Option { return func(c *config) { c.writers = true } }

// Writer is the writer marker (messages.HeaderWriter) of the message as
// its stream stores it, or an error: one wrapping ErrNotWriter when it has
// no single marker that can be trusted (refuse the message), any other
// when it could not be read (retry). The runner must be built
// WithWriters.
func (m Message) Writer(ctx context.Context) (string, error) {
	if m.writer == nil {
		return "", errors.New("the runner does not read writers (stage.WithWriters)")
	}
	return m.writer(ctx)
}

// WrittenBy returns m as carrying writer's marker, for callers of a
// handler that know who wrote it otherwise (a test's own message).
func (m Message) WrittenBy(writer string) Message {
	m.writer = func(context.Context) (string, error) { return writer, nil }
	return m
}

// Stored is one message as its stream stores it.
type Stored struct {
	Subject string
	Data    []byte
	Header  nats.Header
}

// ReadStored reads message seq of stream by STREAM.MSG.GET: the stream's
// leader answers with the stored header block as bytes, so it can be read
// whole, and with what is stored (a direct get may be answered by a
// follower that has not stored it yet).
func ReadStored(ctx context.Context, nc *nats.Conn, stream string, seq uint64) (Stored, error) {
	req, err := json.Marshal(struct {
		Seq uint64 `json:"seq"`
	}{seq})
	if err != nil {
		return Stored{}, err
	}
	api := jetstream.DefaultAPIPrefix + "STREAM.MSG.GET." + stream
	var reply *nats.Msg
	denied, err := Call(ctx, nc, api, func(ctx context.Context) (err error) {
		reply, err = nc.RequestWithContext(ctx, api, req)
		return err
	})
	if err != nil {
		if denied {
			return Stored{}, fmt.Errorf("read message %d of %s: this user may not read it as stored (%s): %w", seq, stream, api, err)
		}
		return Stored{}, fmt.Errorf("read message %d of %s: %w", seq, stream, err)
	}
	var resp struct {
		Error   *jetstream.APIError `json:"error,omitempty"`
		Message *struct {
			Subject string `json:"subject"`
			Seq     uint64 `json:"seq"`
			Header  []byte `json:"hdrs,omitempty"`
			Data    []byte `json:"data,omitempty"`
		} `json:"message,omitempty"`
	}
	if err := json.Unmarshal(reply.Data, &resp); err != nil {
		return Stored{}, fmt.Errorf("read message %d of %s: unreadable answer: %w", seq, stream, err)
	}
	if resp.Error != nil {
		return Stored{}, fmt.Errorf("read message %d of %s: %w", seq, stream, resp.Error)
	}
	if resp.Message == nil || resp.Message.Seq != seq {
		return Stored{}, fmt.Errorf("read message %d of %s: the answer holds another message", seq, stream)
	}
	st := Stored{Subject: resp.Message.Subject, Data: resp.Message.Data}
	if len(resp.Message.Header) == 0 {
		return st, nil
	}
	h, err := nats.DecodeHeadersMsg(resp.Message.Header)
	if err != nil {
		return st, fmt.Errorf("message %d of %s on %s: %w: unreadable header block: %v", seq, stream, st.Subject, ErrNotWriter, err)
	}
	if !messages.HeaderWhole(h, len(resp.Message.Header)) {
		// A blank line inside: what follows it (the server's relay
		// markings) is hidden from every reader; what precedes it is the
		// relaying party's.
		return st, fmt.Errorf("message %d of %s on %s: %w: its header block hides part of itself (made by hand, a relay)", seq, stream, st.Subject, ErrNotWriter)
	}
	st.Header = h
	return st, nil
}

// StoredWriter is the writer marker of a stored message published on its
// subject by its publisher (not relayed by the server for someone else:
// messages.Relayed) carrying exactly one marker; otherwise an error
// wrapping ErrNotWriter.
func (s Stored) StoredWriter() (string, error) {
	if messages.Relayed(s.Header, "", s.Subject) {
		return "", fmt.Errorf("%s: %w: relayed by the server (it carries Nats-Stream/Nats-Subject)", s.Subject, ErrNotWriter)
	}
	var writers []string
	for k, v := range s.Header {
		if strings.EqualFold(k, messages.HeaderWriter) {
			writers = append(writers, v...)
		}
	}
	switch len(writers) {
	case 1:
		return writers[0], nil
	case 0:
		return "", fmt.Errorf("%s: %w: no %s marker (a relay, or published by a build older than its reader: upgrade)", s.Subject, ErrNotWriter, messages.HeaderWriter)
	}
	return "", fmt.Errorf("%s: %w: %d %s markers", s.Subject, ErrNotWriter, len(writers), messages.HeaderWriter)
}

// storedWriter reads the writer of delivery m of stream (Message.Writer).
func storedWriter(nc *nats.Conn, stream string, m Message) func(context.Context) (string, error) {
	return func(ctx context.Context) (string, error) {
		if m.Sequence == 0 {
			return "", errors.New("the delivery names no stream sequence")
		}
		st, err := ReadStored(ctx, nc, stream, m.Sequence)
		if err != nil {
			return "", err
		}
		if st.Subject != m.Subject || !bytes.Equal(st.Data, m.Data) {
			return "", fmt.Errorf("message %d of %s: %w: stored on %s, delivered on %s with other content", m.Sequence, stream, ErrNotWriter, st.Subject, m.Subject)
		}
		return st.StoredWriter()
	}
}
