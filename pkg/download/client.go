// Package download fetches one URL to a partial file, hashing the bytes in
// the same pass. It resumes partial files (also ones left by a crashed
// process, via a JSON sidecar next to the file), retries transient failures
// with exponential backoff, aborts attempts that stall, and bounds both the
// bytes accepted and the memory used whatever the file size.
//
// The package knows nothing of where the file goes next: on success the
// partial is fsynced and left at Request.Dest for the caller to verify and
// rename into place; the caller then calls RemoveSidecar.
package download

import (
	"context"
	"github.com/vmprep/vmprep/internal/version"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"time"
)

// Defaults. The stall timeout replaces a total timeout: a slow download is
// fine as long as bytes keep arriving.
const (
	DefaultStallTimeout   = 60 * time.Second
	DefaultConnectTimeout = 30 * time.Second
	DefaultMaxSize        = 64 << 30
	DefaultMaxAttempts    = 8
	DefaultMaxElapsed     = 15 * time.Minute
	DefaultBufferSize     = 1 << 20
	DefaultMaxRetryAfter  = 5 * time.Minute

	// maxBufferSize keeps the ring of buffers (ringBuffers of them) within 32 MiB.
	maxBufferSize = 8 << 20
	ringBuffers   = 4
)

// Client downloads files. It is safe for concurrent use; each Fetch has its
// own buffers.
type Client struct {
	httpClient     *http.Client
	proxy          func(*http.Request) (*url.URL, error)
	userAgent      string
	stallTimeout   time.Duration
	connectTimeout time.Duration
	maxSize        int64
	maxAttempts    int
	maxElapsed     time.Duration
	initialBackoff time.Duration
	maxBackoff     time.Duration
	maxRetryAfter  time.Duration
	bufferSize     int
	ringBuffers    int // 1 makes reading and hashing take turns; benchmarks compare
	log            *slog.Logger

	// sleep waits between attempts; tests replace it to observe delays.
	sleep func(ctx context.Context, d time.Duration) error
}

// Option configures a Client.
type Option func(*Client)

// WithHTTPClient replaces the default HTTP client. Its Timeout should be zero:
// a total timeout kills slow but healthy downloads (the stall timeout guards
// against dead ones). WithConnectTimeout and WithProxy then have no effect.
func WithHTTPClient(hc *http.Client) Option { return func(c *Client) { c.httpClient = hc } }

// WithProxy sets the proxy function of the default transport (default
// http.ProxyFromEnvironment, which honours HTTP_PROXY, HTTPS_PROXY and NO_PROXY).
func WithProxy(proxy func(*http.Request) (*url.URL, error)) Option {
	return func(c *Client) { c.proxy = proxy }
}

// WithUserAgent sets the User-Agent header (default "vmprep/" and the
// build's version, as internal/version says it: a release number, else the
// module version or "dev+<revision>").
func WithUserAgent(ua string) Option { return func(c *Client) { c.userAgent = ua } }

// WithStallTimeout aborts an attempt (retryably) when no response headers or
// body bytes arrive for d.
func WithStallTimeout(d time.Duration) Option { return func(c *Client) { c.stallTimeout = d } }

// WithConnectTimeout bounds TCP connect and TLS handshake of the default transport.
func WithConnectTimeout(d time.Duration) Option { return func(c *Client) { c.connectTimeout = d } }

// WithMaxSize caps the bytes accepted when Request.ExpectedSize is unknown.
func WithMaxSize(n int64) Option { return func(c *Client) { c.maxSize = n } }

// WithRetry bounds retries: maxAttempts consecutive attempts that make no
// progress, and maxElapsed of time since the last progress. An attempt that
// adds bytes to the file resets both, so a long download on a flaky link
// keeps going as long as it advances.
func WithRetry(maxAttempts int, maxElapsed time.Duration) Option {
	return func(c *Client) { c.maxAttempts, c.maxElapsed = maxAttempts, maxElapsed }
}

// WithBackoff sets the first and the largest delay between attempts (default
// 1s and 60s); delays double with ±50% jitter.
func WithBackoff(initial, maxDelay time.Duration) Option {
	return func(c *Client) { c.initialBackoff, c.maxBackoff = initial, maxDelay }
}

// WithMaxRetryAfter caps how long a server's Retry-After can make us wait.
func WithMaxRetryAfter(d time.Duration) Option { return func(c *Client) { c.maxRetryAfter = d } }

// WithLogger sets the logger for retries and restarts (default: discard).
func WithLogger(l *slog.Logger) Option { return func(c *Client) { c.log = l } }

// WithBufferSize sets the size of each of the four read buffers (default
// 1 MiB, at most 8 MiB).
func WithBufferSize(n int) Option { return func(c *Client) { c.bufferSize = n } }

// New returns a Client.
func New(opts ...Option) *Client {
	c := &Client{
		proxy:          http.ProxyFromEnvironment,
		userAgent:      "vmprep/" + version.Short(),
		stallTimeout:   DefaultStallTimeout,
		connectTimeout: DefaultConnectTimeout,
		maxSize:        DefaultMaxSize,
		maxAttempts:    DefaultMaxAttempts,
		maxElapsed:     DefaultMaxElapsed,
		initialBackoff: time.Second,
		maxBackoff:     60 * time.Second,
		maxRetryAfter:  DefaultMaxRetryAfter,
		bufferSize:     DefaultBufferSize,
		ringBuffers:    ringBuffers,
		sleep:          sleepCtx,
	}
	for _, o := range opts {
		o(c)
	}
	if c.log == nil {
		c.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if c.maxAttempts < 1 {
		c.maxAttempts = 1
	}
	if c.bufferSize < 4<<10 {
		c.bufferSize = 4 << 10
	}
	if c.bufferSize > maxBufferSize {
		c.bufferSize = maxBufferSize
	}
	if c.maxSize <= 0 {
		c.maxSize = DefaultMaxSize
	}
	// Zero or negative durations would make every attempt stall at once or
	// never retry; they mean "default".
	if c.stallTimeout <= 0 {
		c.stallTimeout = DefaultStallTimeout
	}
	if c.connectTimeout <= 0 {
		c.connectTimeout = DefaultConnectTimeout
	}
	if c.maxElapsed <= 0 {
		c.maxElapsed = DefaultMaxElapsed
	}
	if c.initialBackoff <= 0 {
		c.initialBackoff = time.Second
	}
	c.maxBackoff = max(c.maxBackoff, c.initialBackoff)
	c.maxRetryAfter = max(c.maxRetryAfter, 0)
	if c.httpClient == nil {
		c.httpClient = &http.Client{Transport: c.defaultTransport()}
	}
	return c
}

func (c *Client) defaultTransport() *http.Transport {
	dialer := &net.Dialer{Timeout: c.connectTimeout, KeepAlive: 30 * time.Second}
	return &http.Transport{
		Proxy:                 c.proxy,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   c.connectTimeout,
		ForceAttemptHTTP2:     true,
		MaxIdleConns:          16,
		IdleConnTimeout:       90 * time.Second,
		ExpectContinueTimeout: time.Second,
		// Transparent gzip would change the bytes we count and hash and
		// break Range arithmetic.
		DisableCompression: true,
		// Larger socket reads than the 4 KiB default: fewer syscalls.
		ReadBufferSize: 64 << 10,
	}
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
