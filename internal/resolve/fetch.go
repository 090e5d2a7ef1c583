package resolve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v4"

	"github.com/vmprep/vmprep/internal/neterr"
)

// fetchError is a failed fetch and whether the failure was transient.
type fetchError struct {
	err       error
	retryable bool
}

// responseCheck vets a response's headers before its body is read.
type responseCheck func(*http.Response) error

// RetryNotice describes a fetch the resolver is about to try again.
type RetryNotice struct {
	URL string
	Err error
	// In is the pause before the next try; Attempt is its number, of Attempts.
	In                time.Duration
	Attempt, Attempts int
}

type retryNotifyKey struct{}

// WithRetryNotify returns a context under which the resolver calls fn before
// each retry of a fetch, so that someone waiting can be told what is being
// retried and why (the resolver is shared by many requests; the hook belongs
// to the one whose context carries it).
func WithRetryNotify(ctx context.Context, fn func(RetryNotice)) context.Context {
	return context.WithValue(ctx, retryNotifyKey{}, fn)
}

// fetch GETs a small file, retrying transient failures with exponential
// backoff up to r.attempts tries. The body is capped at limit bytes; check,
// if set, may refuse the response from its headers.
//
// A host that cannot be reached at all (its name does not resolve, no
// route) is not retried here: it fails again at once, and the pauses of this
// loop would only make a person wait. The error stays retryable: whoever
// retries over minutes (the stage runner's redeliveries) may still.
func (r *Resolver) fetch(ctx context.Context, url string, limit int64, check responseCheck) ([]byte, *fetchError) {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(r.initialBackoff),
		backoff.WithMaxInterval(max(r.initialBackoff*16, r.initialBackoff)),
		backoff.WithMaxElapsedTime(0), // bounded by the attempt count instead
	)
	var last *fetchError
	counted := &busyBackOff{counted: backoff.WithMaxRetries(b, uint64(max(r.attempts-1, 0))), more: b,
		budget: r.busyBudget, start: time.Now(), last: func() *fetchError { return last }}
	var policy backoff.BackOff = backoff.WithContext(counted, ctx)
	notify, _ := ctx.Value(retryNotifyKey{}).(func(RetryNotice))
	attempt := 0
	body, err := backoff.RetryNotifyWithData(func() ([]byte, error) {
		attempt++
		body, err := r.fetchOnce(ctx, url, limit, check)
		if err == nil {
			return body, nil
		}
		last = &fetchError{err: err, retryable: transient(ctx, err)}
		if !last.retryable || neterr.Unreachable(err) {
			return nil, backoff.Permanent(err)
		}
		r.logger.DebugContext(ctx, "transient fetch failure", "url", url, "err", err)
		return nil, err
	}, policy, func(err error, in time.Duration) {
		if notify != nil {
			n := RetryNotice{URL: url, Err: err, In: in, Attempt: attempt + 1, Attempts: r.attempts}
			if counted.extended {
				n.Attempts = 0 // past the count, on the busy budget: open-ended
			}
			notify(n)
		}
	})
	if err == nil {
		return body, nil
	}
	switch {
	case ctx.Err() != nil && last != nil && !errors.Is(last.err, ctx.Err()):
		// Cancelled while waiting between attempts: say what was failing.
		return nil, &fetchError{err: fmt.Errorf("%w (after: %w)", ctx.Err(), last.err)}
	case last == nil:
		return nil, &fetchError{err: err}
	}
	return nil, last
}

// busyBackOff is the fetch's retry policy: counted tries, then — while the
// last failure is a busy server's and the budget lasts — more, paced by the
// same backoff or the server's Retry-After, whichever is longer.
type busyBackOff struct {
	counted  backoff.BackOff // stops after the attempt count
	more     backoff.BackOff // the pacing beyond it
	budget   time.Duration
	start    time.Time
	last     func() *fetchError
	extended bool // past the count
}

func (p *busyBackOff) NextBackOff() time.Duration {
	d := p.counted.NextBackOff()
	last := p.last()
	if p.budget <= 0 || last == nil || !busy(last.err) {
		return d
	}
	if d == backoff.Stop {
		p.extended = true
		d = p.more.NextBackOff()
	}
	var se *StatusError
	if errors.As(last.err, &se) && se.RetryAfter > d {
		d = se.RetryAfter
	}
	if d == backoff.Stop || time.Since(p.start)+d > p.budget {
		return backoff.Stop
	}
	return d
}

func (p *busyBackOff) Reset() { p.counted.Reset(); p.more.Reset(); p.extended = false }

// busy reports whether err is a server's answer that it cannot serve now —
// 408, 425, 429 or a 5xx, or a connection it reset or cut short — as
// opposed to a host that cannot be reached or nothing listening there.
func busy(err error) bool {
	var se *StatusError
	if errors.As(err, &se) {
		return se.transient()
	}
	return errors.Is(err, syscall.ECONNRESET) || errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.EPIPE)
}

func (r *Resolver) fetchOnce(ctx context.Context, url string, limit int64, check responseCheck) ([]byte, error) {
	// The deadline covers the body too: a trickling server is cut off.
	ctx, cancel := context.WithTimeout(ctx, r.attemptTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", r.userAgent)
	resp, err := r.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		// Drain a little so the connection can be reused.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		return nil, newStatusError(resp)
	}
	if resp.ContentLength > limit {
		return nil, fmt.Errorf("%w: %d bytes announced, limit %d", ErrTooLarge, resp.ContentLength, limit)
	}
	if check != nil {
		if err := check(resp); err != nil {
			return nil, err
		}
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, limit+1))
	if err != nil {
		return nil, fmt.Errorf("read body: %w", err)
	}
	if int64(len(body)) > limit {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrTooLarge, limit)
	}
	return body, nil
}

// transient classifies a fetch failure: server overload and network
// trouble are worth retrying; a cancelled caller, a missing file or an
// oversized answer are not.
func transient(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return false
	}
	var se *StatusError
	if errors.As(err, &se) {
		return se.transient()
	}
	if errors.Is(err, ErrTooLarge) || errors.Is(err, ErrNotListing) {
		return false
	}
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout(),
		errors.Is(err, io.ErrUnexpectedEOF), errors.Is(err, io.EOF),
		errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.ECONNREFUSED),
		errors.Is(err, syscall.EPIPE), errors.Is(err, context.DeadlineExceeded):
		return true
	}
	var oe *net.OpError
	return errors.As(err, &oe)
}
