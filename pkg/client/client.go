// Package client is what a provisioning backend imports to use a vmprep
// deployment: it publishes prepare requests and waits for their one result,
// reporting progress on the way. It depends on nats.go and the wire types
// (pkg/messages, pkg/image) only.
//
// A deployment is any set of vmprep stage processes on a NATS server with
// JetStream: vmprep serve, the stage binaries, or an embedded deployment
// (pkg/embedded) in a test.
package client

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v4"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// The wire types, under the names a client uses.
type (
	// Request asks for an image: see messages.PrepareRequest.
	Request = messages.PrepareRequest
	// Result is a request's one answer: see messages.Result.
	Result = messages.Result
	// Progress reports bytes done on one asset: see messages.Progress.
	Progress = messages.Progress
)

var (
	// ErrNoDeployment means the NATS server has no vmprep streams: no stage
	// has ever started against it.
	ErrNoDeployment = errors.New("no vmprep deployment on this NATS server")
	// ErrRequestIDReused means a request id already names a different request
	// (another image or format): its result is not this request's.
	ErrRequestIDReused = errors.New("request id reused")
	// ErrResultUnmarked means a result carried no collector's marker
	// (messages.ResultsWriter) though the server did not relay it: a
	// deployment older than this client, or a forgery (a direct get with
	// "no_hdr" answered onto the result subject). It is not taken; a
	// Prepare that ends waiting says it saw one.
	ErrResultUnmarked = errors.New("result not marked by the collector: upgrade the deployment (collector and resolver first)")
	// errResultRelayed: a message the server relayed onto the result
	// subject (a direct get's or a pull request's answer), not a result.
	errResultRelayed = errors.New("relayed by the server, not published by the collector")
)

// acceptResult reports why m, read on the result subject subject, is not
// a result the collector published, or nil. stored: m is the answer to a
// direct get of the results stream; else it was delivered live. A live
// message must arrive under subject itself: the server delivers a
// consumer's messages to a pull request's reply subject under their own
// subjects, with the headers their publisher chose (a marker included).
func acceptResult(m *nats.Msg, subject string, stored bool) error {
	stream := ""
	if stored {
		stream = messages.StreamResults
	} else if m.Subject != subject {
		return fmt.Errorf("%s: message under %q: %w", subject, m.Subject, errResultRelayed)
	}
	// A header block made by hand hides the server's relay markings (and
	// shows a marker of the attacker's) after a blank line.
	if !headerWhole(m) || messages.Relayed(m.Header, stream, subject) {
		return fmt.Errorf("%s: %w", subject, errResultRelayed)
	}
	if !messages.FromResultsWriter(m.Header, stream, subject) {
		return fmt.Errorf("%s: %w", subject, ErrResultUnmarked)
	}
	return nil
}

// FailedError is a request that ended with a failed result: which stage
// failed, for which asset, why, and whether trying again may help.
type FailedError struct {
	RequestID string
	Spec      image.Spec
	messages.Failure
}

func (e *FailedError) Error() string {
	return fmt.Sprintf("request %s (%s): %s", e.RequestID, e.Spec, e.Failure.Error())
}

// NewRequestID returns a random request id.
func NewRequestID() string {
	var b [12]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

// Client talks to one vmprep deployment over a NATS connection.
type Client struct {
	nc        *nats.Conn
	js        jetstream.JetStream
	owned     bool
	namespace string
}

// Option configures a Client.
type Option func(*Client) error

// WithNamespace makes the client publish its requests to
// vmprep.prepare.<ns> and read their results and progress under that
// namespace, where its request ids are its own. A deployment's NATS
// permissions may pin a user to one namespace (see deploy/).
func WithNamespace(ns string) Option {
	return func(c *Client) error {
		if ns != "" {
			if err := messages.ValidateNamespace(ns); err != nil {
				return err
			}
		}
		c.namespace = ns
		return nil
	}
}

// New returns a client on an existing connection; the caller keeps it and
// closes it.
func New(nc *nats.Conn, opts ...Option) (*Client, error) {
	if nc == nil {
		return nil, errors.New("client: nil NATS connection")
	}
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("client: %w", err)
	}
	c := &Client{nc: nc, js: js}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, fmt.Errorf("client: %w", err)
		}
	}
	return c, nil
}

// Namespace is the namespace the client's requests are in ("" for the default).
func (c *Client) Namespace() string { return c.namespace }

// Connect connects to the NATS server(s) at url (comma-separated) and
// returns a client that owns the connection: Close closes it.
func Connect(url string, opts ...nats.Option) (*Client, error) {
	nc, err := nats.Connect(url, append([]nats.Option{nats.Name("vmprep-client"), nats.MaxReconnects(-1)}, opts...)...)
	if err != nil {
		return nil, fmt.Errorf("client: connect to NATS: %w", err)
	}
	c, err := New(nc)
	if err != nil {
		nc.Close()
		return nil, err
	}
	c.owned = true
	return c, nil
}

// Conn returns the client's NATS connection.
func (c *Client) Conn() *nats.Conn { return c.nc }

// Close closes the connection if the client opened it.
func (c *Client) Close() {
	if c.owned {
		c.nc.Close()
	}
}

// PrepareOption configures one Prepare call.
type PrepareOption func(*prepareConfig)

type prepareConfig struct {
	progress func(Progress)
}

// WithProgress calls fn with each progress event while waiting (from the
// NATS connection's goroutine: return quickly). Progress is best effort.
// Prepare returns only after the last call of fn has returned, and fn is not
// called after that.
func WithProgress(fn func(Progress)) PrepareOption {
	return func(c *prepareConfig) { c.progress = fn }
}

// WithProgressChan sends progress events to ch, dropping them when ch is full
// rather than slowing the connection. Nothing is sent once Prepare has
// returned, so the caller may close ch then.
func WithProgressChan(ch chan<- Progress) PrepareOption {
	return WithProgress(func(p Progress) {
		select {
		case ch <- p:
		default:
		}
	})
}

// Prepare publishes req and waits for its one result (which may already
// exist when the request id was used before). An empty RequestID gets a
// random one; an empty Format means qcow2. A failed result is returned
// together with a *FailedError; a result that belongs to another request
// with the same id is refused with ErrRequestIDReused.
func (c *Client) Prepare(ctx context.Context, req Request, opts ...PrepareOption) (Result, error) {
	var cfg prepareConfig
	for _, o := range opts {
		o(&cfg)
	}
	if req.RequestID == "" {
		req.RequestID = NewRequestID()
	}
	if req.Format == "" {
		req.Format = image.FormatQCOW2
	}
	if err := req.Validate(); err != nil {
		return Result{}, err
	}
	spec, err := req.Spec.Normalize()
	if err != nil {
		return Result{}, err
	}
	req.Spec = spec
	if !c.nc.IsConnected() {
		return Result{}, fmt.Errorf("not connected to NATS at %s", c.nc.ConnectedUrlRedacted())
	}
	// Progress is watched even without WithProgress: the last failure a stage
	// reported retrying says why, if ctx ends before the result comes.
	var lastRetry struct {
		sync.Mutex
		what string
	}
	// An async subscription's callback may still be running (or about to
	// run) when Unsubscribe returns: ended, set under the lock each call of
	// cfg.progress holds, keeps it from being called once Prepare returns.
	var delivering sync.Mutex
	ended := false
	sub, err := c.nc.Subscribe(messages.ProgressSubjectIn(c.namespace, req.RequestID), func(m *nats.Msg) {
		var p Progress
		if messages.Decode(m.Data, messages.TypeProgress, &p) != nil {
			return
		}
		if p.Retrying != "" {
			lastRetry.Lock()
			what := p.Stage // "fetcher, disk"; "resolver" (a request-wide step)
			if p.Asset != "" {
				what += ", " + string(p.Asset)
			}
			lastRetry.what = what + ": " + p.Retrying
			lastRetry.Unlock()
		}
		if cfg.progress != nil {
			delivering.Lock()
			defer delivering.Unlock()
			if !ended {
				cfg.progress(p)
			}
		}
	})
	if err != nil {
		return Result{}, err
	}
	defer func() {
		_ = sub.Unsubscribe()
		delivering.Lock()
		ended = true
		delivering.Unlock()
	}()
	// The result is read without any consumer (a client needs no right to
	// create one: a consumer's deliver subject is not checked against its
	// creator's permissions): subscribe to the result subject first, then
	// read the last stored result by direct get, so that neither a fast
	// answer nor an earlier answer to the same id is missed.
	subject := messages.ResultSubjectIn(c.namespace, req.RequestID)
	live := make(chan *nats.Msg, 8)
	rsub, err := c.nc.ChanSubscribe(subject, live)
	if err != nil {
		return Result{}, fmt.Errorf("watch for the result: %w", err)
	}
	defer func() { _ = rsub.Unsubscribe() }()
	fctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = c.nc.FlushWithContext(fctx)
	cancel()
	if err != nil {
		return Result{}, fmt.Errorf("watch for the result: %w", err)
	}
	// refused is the last result refused as unmarked (ErrResultUnmarked):
	// said if ctx ends before the collector's comes.
	var refused error
	stored, err := c.firstResult(ctx, subject)
	if errors.Is(err, ErrResultUnmarked) {
		refused, err = err, nil
	}
	if err != nil {
		return Result{}, err
	}
	data, err := messages.Encode(messages.TypePrepareRequest, &req)
	if err != nil {
		return Result{}, err
	}
	// The publication id names the request's content: a retried publish of
	// this request is deduplicated, a request for another image with the
	// same id is not (the deployment answers it with a refusal).
	msgID := "prepare." + messages.RequestKey(c.namespace, req.RequestID) + "." + req.Fingerprint()
	if _, err := c.js.Publish(ctx, messages.PrepareSubject(c.namespace), data, jetstream.WithMsgID(msgID)); err != nil {
		return Result{}, fmt.Errorf("publish prepare request: %w", err)
	}
	nudged := false
	if refused != nil {
		// The stored result is not the collector's (an older deployment's,
		// or a forgery), and the publish above may have been deduplicated
		// as a repeat: ask under a fresh id, which the deployment answers.
		nudged = true
		if _, err := c.js.Publish(ctx, messages.PrepareSubject(c.namespace), data, jetstream.WithMsgID(msgID+"."+NewRequestID())); err != nil {
			return Result{}, fmt.Errorf("publish prepare request: %w", err)
		}
	}
	// A result published while the connection was down never reaches the
	// subscription: the stored one is read again now and then.
	poll := time.NewTicker(resultPoll)
	defer poll.Stop()
	for {
		got := stored
		stored = nil
		for got == nil {
			select {
			case m := <-live:
				if err := acceptResult(m, subject, false); err != nil {
					if errors.Is(err, ErrResultUnmarked) {
						refused = err
					}
					continue
				}
				got = m.Data
			case <-poll.C:
				if got, err = c.lastResult(ctx, subject); errors.Is(err, ErrResultUnmarked) {
					refused = err
				}
				if err != nil {
					got = nil // the connection is away, or no result of the collector's: keep waiting
				}
			case <-ctx.Done():
				err := fmt.Errorf("waiting for the result of request %s: %w", req.RequestID, ctx.Err())
				if refused != nil {
					err = fmt.Errorf("%w (refused a result: %w)", err, refused)
				}
				lastRetry.Lock()
				if lastRetry.what != "" {
					err = fmt.Errorf("%w (last error: %s)", err, lastRetry.what)
				}
				lastRetry.Unlock()
				return Result{}, err
			}
			if c.nc.IsClosed() {
				return Result{}, fmt.Errorf("waiting for the result of request %s: %w", req.RequestID, nats.ErrConnectionClosed)
			}
		}
		var res Result
		if err := messages.Decode(got, messages.TypeResult, &res); err != nil {
			return Result{}, fmt.Errorf("unreadable result for request %s: %w", req.RequestID, err)
		}
		if !answers(res, req, c.namespace) {
			// The id's last answer is about another request (another image,
			// or a refusal of someone else's reuse of the id). Ours comes:
			// unless our publish was deduplicated as a repeat, so publish
			// once more under a fresh id, which the deployment answers.
			if !nudged {
				nudged = true
				if _, err := c.js.Publish(ctx, messages.PrepareSubject(c.namespace), data, jetstream.WithMsgID(msgID+"."+NewRequestID())); err != nil {
					return Result{}, fmt.Errorf("publish prepare request: %w", err)
				}
			}
			continue
		}
		if res.Status != messages.ResultPrepared {
			f := messages.Failure{Stage: "unknown", Cause: "failed without a reason"}
			if res.Failure != nil {
				f = *res.Failure
			}
			if f.Code == messages.FailureRequestIDReused {
				return res, fmt.Errorf("%w: %s", ErrRequestIDReused, f.Cause)
			}
			return res, &FailedError{RequestID: req.RequestID, Spec: spec, Failure: f}
		}
		return res, nil
	}
}

// answers reports whether res is the answer to req in namespace ns: results
// echo what was asked (a result of an older build may leave fields empty).
// The request id and namespace are checked too: any user can make the
// server publish a message it may read (its own result) onto any subject,
// as the reply to a direct get, and the results stream stores it.
func answers(res Result, req Request, ns string) bool {
	if res.RequestID != "" && res.RequestID != req.RequestID {
		return false
	}
	if res.Namespace != "" && res.Namespace != ns {
		return false
	}
	if res.Spec != (image.Spec{}) && res.Spec != req.Spec {
		return false
	}
	if res.Format != "" && res.Format != req.Format {
		return false
	}
	return res.Target == req.Target
}

// resultPoll is how often a waiting Prepare reads the stored result again,
// in case the live one was published while the connection was away.
const resultPoll = 5 * time.Second

// deploymentGrace is how long a client asks again before it says there is
// no deployment: a deployment started together with its clients (compose up,
// a test), or a stream whose leader is being elected after a node's loss,
// has no responder for a few seconds.
const deploymentGrace = 10 * time.Second

// firstResult is lastResult, asked again for up to deploymentGrace while
// the results stream does not answer.
func (c *Client) firstResult(ctx context.Context, subject string) ([]byte, error) {
	b := backoff.NewExponentialBackOff()
	b.InitialInterval, b.MaxInterval, b.MaxElapsedTime = 200*time.Millisecond, 2*time.Second, deploymentGrace
	return backoff.RetryWithData(func() ([]byte, error) {
		data, err := c.lastResult(ctx, subject)
		if err != nil && !errors.Is(err, ErrNoDeployment) {
			return nil, backoff.Permanent(err)
		}
		return data, err
	}, backoff.WithContext(b, ctx))
}

// headerWhole reports whether m's parsed headers are its whole header
// block (messages.HeaderWhole): a block made by hand hides the server's
// relay markings after a blank line, where nats.go stops reading.
func headerWhole(m *nats.Msg) bool {
	return messages.HeaderWhole(m.Header, m.Size()-len(m.Subject)-len(m.Reply)-len(m.Data))
}

// lastResult is StoredResult on the client's connection.
func (c *Client) lastResult(ctx context.Context, subject string) ([]byte, error) {
	return StoredResult(ctx, c.nc, subject)
}

// StoredResult reads the last result stored on subject (a result subject,
// messages.ResultSubjectIn) of the results stream by direct get: nil when
// there is none or the server relayed it there (acceptResult). One not
// marked by the collector is ErrResultUnmarked; a server without the
// stream (no responders) is ErrNoDeployment.
func StoredResult(ctx context.Context, nc *nats.Conn, subject string) ([]byte, error) {
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	m, err := nc.RequestWithContext(rctx, "$JS.API.DIRECT.GET."+messages.StreamResults+"."+subject, nil)
	if errors.Is(err, nats.ErrNoResponders) {
		return nil, fmt.Errorf("%w (stream %s is missing, or does not allow direct gets: run `vmprep setup` as the operator, or start vmprep serve)", ErrNoDeployment, messages.StreamResults)
	}
	if err != nil {
		return nil, fmt.Errorf("read the result of %s: %w", subject, err)
	}
	switch status := m.Header.Get("Status"); status {
	case "":
		if err := acceptResult(m, subject, true); err != nil {
			if errors.Is(err, ErrResultUnmarked) {
				return nil, err
			}
			// Stored, but it came from another stream, relayed here as the
			// reply to someone's direct get: no result of the collector's.
			return nil, nil
		}
		return m.Data, nil
	case "404":
		return nil, nil
	default:
		return nil, fmt.Errorf("read the result of %s: server answered %s %s", subject, status, m.Header.Get("Description"))
	}
}

// ReportCorrupt tells the deployment that object version ref read wrong
// (its bytes do not match its digest), reason saying how. Readers may not
// delete objects; the deployment's healer re-reads the object itself and
// deletes it only if it is bad, so that the next request fetches it again.
// There is no message ID on purpose: a forger could pre-empt a real report
// with a false one under the same ID, and the real one would be dropped as
// a duplicate.
func ReportCorrupt(ctx context.Context, js jetstream.JetStream, ref messages.ObjectRef, reason string) error {
	data, err := messages.Encode(messages.TypeCorruptReport, &messages.CorruptReport{Object: ref, Reason: reason})
	if err != nil {
		return err
	}
	if _, err := js.Publish(ctx, messages.SubjectCorrupt, data); err != nil {
		return fmt.Errorf("report corrupt object %s/%s: %w", ref.Bucket, ref.Name, err)
	}
	return nil
}
