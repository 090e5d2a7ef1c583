package resolve

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"syscall"

	"github.com/cenkalti/backoff/v4"
)

// fetchError is a failed fetch and whether the failure was transient.
type fetchError struct {
	err       error
	retryable bool
}

// responseCheck vets a response's headers before its body is read.
type responseCheck func(*http.Response) error

// fetch GETs a small file, retrying transient failures with exponential
// backoff up to r.attempts tries. The body is capped at limit bytes; check,
// if set, may refuse the response from its headers.
func (r *Resolver) fetch(ctx context.Context, url string, limit int64, check responseCheck) ([]byte, *fetchError) {
	b := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(r.initialBackoff),
		backoff.WithMaxInterval(max(r.initialBackoff*16, r.initialBackoff)),
		backoff.WithMaxElapsedTime(0), // bounded by the attempt count instead
	)
	var policy backoff.BackOff = backoff.WithContext(backoff.WithMaxRetries(b, uint64(max(r.attempts-1, 0))), ctx)
	var last *fetchError
	body, err := backoff.RetryWithData(func() ([]byte, error) {
		body, err := r.fetchOnce(ctx, url, limit, check)
		if err == nil {
			return body, nil
		}
		last = &fetchError{err: err, retryable: transient(ctx, err)}
		if !last.retryable {
			return nil, backoff.Permanent(err)
		}
		r.logger.DebugContext(ctx, "transient fetch failure", "url", url, "err", err)
		return nil, err
	}, policy)
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
