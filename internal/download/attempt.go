package download

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/vmprep/vmprep/internal/neterr"

	"github.com/cenkalti/backoff/v4"
)

// errRestart means the attempt emptied the file and another request should
// follow at once; it is not a failure.
var errRestart = errors.New("restart from zero")

// progressReset is how many bytes an attempt must add for the retry budget
// to start afresh: enough that a server dribbling a few bytes per connection
// cannot keep us retrying for ever.
const progressReset = 1 << 20

// maxValidatorLen bounds the ETag and Last-Modified we keep.
const maxValidatorLen = 1024

// errStalled is the cancellation cause when the stall timer fires.
var errStalled = errors.New("stalled")

func checkURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return fmt.Errorf("unsupported URL scheme %q", u.Scheme)
	}
	if u.Host == "" {
		return errors.New("URL has no host")
	}
	return nil
}

// transfer makes attempts until the file is complete, a permanent error
// occurs or the retry budget runs out.
func (fe *fetch) transfer(ctx context.Context) error {
	c := fe.c
	bo := backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(c.initialBackoff),
		backoff.WithMaxInterval(c.maxBackoff),
		backoff.WithMultiplier(2),
		backoff.WithRandomizationFactor(0.5),
		backoff.WithMaxElapsedTime(0), // we bound elapsed time ourselves, from the last progress
	)
	failures := 0
	since := time.Now()
	mark := fe.have // file size when the retry budget was last renewed
	var last *Error // the last failure retried, quoted if ctx ends the Fetch
	for {
		if fe.complete() {
			return nil
		}
		fe.attempts++
		err := fe.attempt(ctx)
		if err == nil {
			return nil
		}
		if errors.Is(err, errRestart) {
			continue
		}
		var e *Error
		if !errors.As(err, &e) {
			e = fe.permanent("fetch", 0, err)
		}
		if !e.Retryable {
			if ctx.Err() != nil && last != nil {
				// "context deadline exceeded" alone hides what was going wrong.
				e.Err = fmt.Errorf("%w (last error: %s)", e.Err, last.cause())
				e.Attempts = fe.attempts
			}
			return e
		}
		last = e
		// Only net progress renews the budget: bytes gained and then lost to
		// a restart from zero do not count.
		if fe.have >= mark+progressReset || (fe.have > mark && fe.total > 0 && fe.have == fe.total) {
			failures = 0
			bo.Reset()
			since = time.Now()
			mark = fe.have
		}
		failures++
		if failures >= c.maxAttempts {
			return fe.giveUp(e)
		}
		delay := bo.NextBackOff()
		if e.retryAfter > 0 {
			delay = max(delay, min(e.retryAfter, c.maxRetryAfter))
		}
		if time.Since(since)+delay > c.maxElapsed {
			return fe.giveUp(e)
		}
		c.log.Warn("download attempt failed, retrying", "asset", fe.req.Name, "url", fe.req.URL,
			"attempt", fe.attempts, "have", fe.have, "delay", delay, "err", e)
		if fe.req.OnRetry != nil {
			fe.req.OnRetry(Retry{Err: e, In: delay, Failures: failures, MaxFailures: c.maxAttempts})
		}
		if err := c.sleep(ctx, delay); err != nil {
			e := fe.permanent("wait to retry", 0, fmt.Errorf("%w (last error: %s)", err, e.cause()))
			e.Attempts = fe.attempts
			return e
		}
	}
}

// giveUp ends a Fetch whose retry budget ran out on the retryable e. It
// stays retryable — a later Fetch resumes where this one stopped — unless
// the body keeps ending early and the server answers range requests with
// the whole file: a later Fetch would start from zero and end the same way.
func (fe *fetch) giveUp(e *Error) *Error {
	e.Attempts = fe.attempts
	if fe.noResume && errors.Is(e, io.ErrUnexpectedEOF) {
		e.Retryable = false
		e.Err = fmt.Errorf("%w; the server cannot resume (it answers a range request with the whole file) and its body keeps ending early", e.Err)
	}
	return e
}

// attempt makes one request and streams its body into the file.
func (fe *fetch) attempt(ctx context.Context) error {
	c := fe.c
	actx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	stall := time.AfterFunc(c.stallTimeout, func() { cancel(errStalled) })
	defer stall.Stop()

	// Whatever a failed write left past `have` is not hashed: cut it off.
	if err := fe.f.Truncate(fe.have); err != nil {
		return fe.permanent("truncate", 0, err)
	}
	if _, err := fe.f.Seek(fe.have, io.SeekStart); err != nil {
		return fe.permanent("seek", 0, err)
	}

	hreq, err := http.NewRequestWithContext(actx, http.MethodGet, fe.req.URL, nil)
	if err != nil {
		return fe.permanent("build request", 0, err)
	}
	hreq.Header.Set("User-Agent", c.userAgent)
	// Explicit identity: also stops a caller-supplied transport from
	// transparently decompressing.
	hreq.Header.Set("Accept-Encoding", "identity")
	rangeStart := fe.have
	if rangeStart > 0 {
		hreq.Header.Set("Range", fmt.Sprintf("bytes=%d-", rangeStart))
		if v := fe.ifRange(); v != "" {
			hreq.Header.Set("If-Range", v)
		}
	}
	resp, err := c.httpClient.Do(hreq)
	if err != nil {
		return fe.classify(ctx, actx, "request", err)
	}
	defer resp.Body.Close()

	if err := fe.accept(resp, rangeStart); err != nil {
		return err
	}
	if fe.total > fe.have && fe.total > fe.reserved {
		if err := preallocate(fe.f, fe.total); err != nil {
			return fe.permanent("reserve disk space", 0, fmt.Errorf("%d bytes for %s: %w", fe.total, fe.req.Dest, err))
		}
		fe.reserved = fe.total
	}
	return fe.copyBody(ctx, actx, resp.Body, stall)
}

// ifRange is the validator for If-Range: a strong ETag, else Last-Modified.
func (fe *fetch) ifRange() string {
	if et := fe.meta.ETag; et != "" && !strings.HasPrefix(et, "W/") {
		return et
	}
	return fe.meta.LastModified
}

// accept checks the response status and headers and prepares the file for its body.
func (fe *fetch) accept(resp *http.Response, rangeStart int64) error {
	st := resp.StatusCode
	switch {
	case st == http.StatusOK:
		if fe.have > 0 {
			fe.noResume = true
			fe.c.log.Info("server sent the whole file to a range request, starting over",
				"asset", fe.req.Name, "url", fe.req.URL, "had", fe.have)
			if err := fe.restart(); err != nil {
				return err
			}
			if _, err := fe.f.Seek(0, io.SeekStart); err != nil {
				return fe.permanent("seek", 0, err)
			}
		}
		cl := resp.ContentLength
		if cl > fe.limit() {
			return fe.tooBig("Content-Length", cl)
		}
		if fe.req.ExpectedSize > 0 && cl >= 0 && cl != fe.req.ExpectedSize {
			return fe.permanent("check size", st, fmt.Errorf("%w: Content-Length %d bytes, expected %d", ErrSizeMismatch, cl, fe.req.ExpectedSize))
		}
		fe.total = max(fe.req.ExpectedSize, cl, 0)
		return fe.saveMeta(resp)

	case st == http.StatusPartialContent:
		if rangeStart == 0 {
			return fe.permanent("check response", st, errors.New("partial content to a request without Range"))
		}
		start, end, total, err := parseContentRange(resp.Header.Get("Content-Range"))
		reason := ""
		switch {
		case err != nil:
			reason = err.Error()
		case start != rangeStart:
			reason = fmt.Sprintf("Content-Range starts at %d, asked for %d", start, rangeStart)
		case total >= 0 && fe.total > 0 && total != fe.total:
			reason = fmt.Sprintf("Content-Range total %d, expected %d", total, fe.total)
		case total > fe.limit():
			reason = fmt.Sprintf("Content-Range total %d exceeds limit %d", total, fe.limit())
		case end < start:
			reason = fmt.Sprintf("Content-Range ends at %d before its start %d", end, start)
		case fe.changedETag(resp):
			reason = "ETag changed"
		}
		if reason != "" {
			fe.c.log.Info("cannot resume, starting over", "asset", fe.req.Name, "url", fe.req.URL, "reason", reason)
			if err := fe.restart(); err != nil {
				return err
			}
			return errRestart
		}
		fe.fromDisk = false
		if total >= 0 && fe.total == 0 {
			fe.total = total
			return fe.saveMeta(resp)
		}
		return nil

	case st == http.StatusRequestedRangeNotSatisfiable && rangeStart > 0:
		fe.c.log.Info("range not satisfiable, starting over", "asset", fe.req.Name, "url", fe.req.URL, "had", fe.have)
		if err := fe.restart(); err != nil {
			return err
		}
		return errRestart

	case st == http.StatusTooManyRequests || st == http.StatusServiceUnavailable:
		e := fe.retryable("request", st, errors.New(http.StatusText(st)))
		e.retryAfter = neterr.RetryAfter(resp.Header.Get("Retry-After"), time.Now())
		return e

	case st == http.StatusRequestTimeout || st == http.StatusInternalServerError ||
		st == http.StatusBadGateway || st == http.StatusGatewayTimeout || (st >= 520 && st <= 599):
		return fe.retryable("request", st, errors.New(statusText(st)))

	default:
		return fe.permanent("request", st, errors.New(statusText(st)))
	}
}

func statusText(st int) string {
	if t := http.StatusText(st); t != "" {
		return t
	}
	return "unexpected status"
}

// validator returns v unless it is too long to be a sane ETag or date; a
// hostile server must not bloat the sidecar.
func validator(v string) string {
	if len(v) > maxValidatorLen {
		return ""
	}
	return v
}

// changedETag reports whether a 206 carries a strong ETag other than the one
// our prefix came from (a server that ignored If-Range).
func (fe *fetch) changedETag(resp *http.Response) bool {
	et := resp.Header.Get("ETag")
	return et != "" && fe.meta.ETag != "" && et != fe.meta.ETag &&
		!strings.HasPrefix(et, "W/") && !strings.HasPrefix(fe.meta.ETag, "W/")
}

// saveMeta records the response's validators in the sidecar before any body
// byte is written, so a crash leaves a resumable file.
func (fe *fetch) saveMeta(resp *http.Response) error {
	if resp.StatusCode == http.StatusOK {
		fe.meta = sidecar{ETag: validator(resp.Header.Get("ETag")), LastModified: validator(resp.Header.Get("Last-Modified"))}
	}
	fe.meta.URL = fe.req.URL
	fe.meta.Expected = fe.req.Expected
	fe.meta.Size = fe.total
	if err := writeSidecar(fe.req.Dest, fe.meta); err != nil {
		return fe.permanent("write sidecar", 0, err)
	}
	return nil
}

// copyBody streams body into the file and the hash pipe.
func (fe *fetch) copyBody(ctx, actx context.Context, body io.Reader, stall *time.Timer) error {
	limit := fe.limit()
	for {
		c := fe.pipe.get()
		n, rerr := fe.fill(body, c.buf, stall)
		if n > 0 {
			if fe.have+int64(n) > limit {
				fe.pipe.put(c)
				return fe.tooBig("body of at least", fe.have+int64(n))
			}
			if _, err := fe.f.Write(c.buf[:n]); err != nil {
				fe.pipe.put(c)
				return fe.permanent("write", 0, err)
			}
			fe.pipe.submit(c, n)
			fe.have += int64(n)
			fe.wb.Wrote(int64(n))
			fe.transferred += int64(n)
			// Reported once written: what a person sees as fetched is in the
			// file, and survives the process being killed.
			fe.report(fe.have, 0, false)
		} else {
			fe.pipe.put(c)
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			return fe.classify(ctx, actx, "read body", rerr)
		}
	}
	if fe.total > 0 && fe.have < fe.total {
		return fe.retryable("read body", 0, fmt.Errorf("body ended at %d of %d bytes: %w", fe.have, fe.total, io.ErrUnexpectedEOF))
	}
	return nil
}

// fill reads into buf until it is full, the body ends or fails, or —
// once it holds some bytes — progressInterval has passed: filling whole
// buffers keeps file writes and hand-offs to the hasher large on a fast
// link, and the time bound makes a slow link's bytes reach the file (and
// the progress report, which counts only bytes written) a few times a
// second instead of once per buffer. Each read that brings bytes rearms
// the stall timer.
func (fe *fetch) fill(body io.Reader, buf []byte, stall *time.Timer) (int, error) {
	n := 0
	start := time.Now()
	for n < len(buf) {
		m, err := body.Read(buf[n:])
		if m > 0 {
			n += m
			stall.Reset(fe.c.stallTimeout)
		}
		if err != nil {
			return n, err
		}
		if n > 0 && time.Since(start) >= progressInterval {
			return n, nil
		}
	}
	return n, nil
}

// classify turns a transport or body error into an *Error.
func (fe *fetch) classify(ctx, actx context.Context, op string, err error) *Error {
	if ctx.Err() != nil {
		return fe.permanent(op, 0, context.Cause(ctx))
	}
	if errors.Is(context.Cause(actx), errStalled) {
		return fe.retryable(op, 0, fmt.Errorf("no data for %v (stall timeout)", fe.c.stallTimeout))
	}
	// A redirect to file://, ftp:// or anything else we do not fetch: the
	// transport refuses it each time ("unsupported protocol scheme").
	var ue *url.Error
	if errors.As(err, &ue) && ue.URL != fe.req.URL {
		if cerr := checkURL(ue.URL); cerr != nil {
			return fe.permanent(op, 0, fmt.Errorf("redirected to %s: %w", ue.URL, cerr))
		}
	}
	var (
		certErr  *tls.CertificateVerificationError
		unkAuth  x509.UnknownAuthorityError
		hostErr  x509.HostnameError
		invalErr x509.CertificateInvalidError
	)
	if errors.As(err, &certErr) || errors.As(err, &unkAuth) || errors.As(err, &hostErr) || errors.As(err, &invalErr) {
		return fe.permanent(op, 0, err)
	}
	return fe.retryable(op, 0, err)
}

// parseContentRange parses "bytes start-end/total"; total is -1 for "*".
func parseContentRange(v string) (start, end, total int64, err error) {
	bad := func() (int64, int64, int64, error) {
		return 0, 0, 0, fmt.Errorf("malformed Content-Range %q", v)
	}
	rest, ok := strings.CutPrefix(v, "bytes ")
	if !ok {
		return bad()
	}
	rng, tot, ok := strings.Cut(rest, "/")
	if !ok {
		return bad()
	}
	s, e, ok := strings.Cut(rng, "-")
	if !ok {
		return bad()
	}
	if start, err = strconv.ParseInt(s, 10, 64); err != nil || start < 0 {
		return bad()
	}
	if end, err = strconv.ParseInt(e, 10, 64); err != nil || end < 0 {
		return bad()
	}
	if tot == "*" {
		return start, end, -1, nil
	}
	if total, err = strconv.ParseInt(tot, 10, 64); err != nil || total <= end {
		return bad()
	}
	return start, end, total, nil
}
