package download

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/vmprep/vmprep/internal/neterr"
	"github.com/vmprep/vmprep/internal/version"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmprep/vmprep/pkg/digest"
)

const testSize = 4 << 20

// delayLog records the waits between attempts instead of sleeping them, so
// that Retry-After can be checked without slowing the tests.
type delayLog struct {
	mu     sync.Mutex
	delays []time.Duration
}

func (d *delayLog) sleep(ctx context.Context, dur time.Duration) error {
	d.mu.Lock()
	d.delays = append(d.delays, dur)
	d.mu.Unlock()
	return ctx.Err()
}

func (d *delayLog) get() []time.Duration {
	d.mu.Lock()
	defer d.mu.Unlock()
	return append([]time.Duration(nil), d.delays...)
}

func newTestClient(opts ...Option) (*Client, *delayLog) {
	base := []Option{WithBackoff(time.Millisecond, 4*time.Millisecond), WithRetry(6, time.Minute)}
	c := New(append(base, opts...)...)
	d := &delayLog{}
	c.sleep = d.sleep
	return c, d
}

func TestFetchScenarios(t *testing.T) {
	content := randomBytes(testSize, 1)
	half := int64(testSize / 2)
	corrupt := fault{corrupt: true}
	always503 := fault{status: http.StatusServiceUnavailable}
	chunkedAll := fault{chunkedAll: true}

	tests := []struct {
		name   string
		faults []fault
		every  *fault
		opts   []Option
		expect int64 // ExpectedSize: 0 means the true size, -1 unknown
		alg    digest.Algorithm
		noHash bool

		wantRequests  int // 0: do not check
		wantErr       error
		wantStatus    int
		wantRetryable bool
		check         func(t *testing.T, reqs []seen, res Result, delays []time.Duration)
	}{
		{
			name: "happy path", wantRequests: 1,
			check: func(t *testing.T, reqs []seen, res Result, _ []time.Duration) {
				if reqs[0].Range != "" || res.Resumed || res.Transferred != testSize || res.Attempts != 1 {
					t.Errorf("range %q, result %+v", reqs[0].Range, res)
				}
			},
		},
		{name: "unknown size", expect: -1, wantRequests: 1},
		{name: "no expected digest", noHash: true, wantRequests: 1},
		{name: "sha512 expected", alg: digest.SHA512, wantRequests: 1},
		{
			name:         "503 storm then success",
			faults:       []fault{always503, always503, always503},
			wantRequests: 4,
			check: func(t *testing.T, _ []seen, res Result, delays []time.Duration) {
				if len(delays) != 3 || res.Attempts != 4 {
					t.Errorf("delays %v, attempts %d; want 3 delays, 4 attempts", delays, res.Attempts)
				}
			},
		},
		{
			name:         "500 502 504 408 retried",
			faults:       []fault{{status: 500}, {status: 502}, {status: 504}, {status: 408}},
			wantRequests: 5,
		},
		{
			name:         "429 honours Retry-After seconds",
			faults:       []fault{{status: http.StatusTooManyRequests, retryAfter: "1"}},
			wantRequests: 2,
			check: func(t *testing.T, _ []seen, _ Result, delays []time.Duration) {
				if len(delays) != 1 || delays[0] != time.Second {
					t.Errorf("delays %v, want [1s]", delays)
				}
			},
		},
		{
			name:         "Retry-After is capped",
			faults:       []fault{{status: http.StatusServiceUnavailable, retryAfter: "86400"}},
			opts:         []Option{WithMaxRetryAfter(3 * time.Second)},
			wantRequests: 2,
			check: func(t *testing.T, _ []seen, _ Result, delays []time.Duration) {
				if len(delays) != 1 || delays[0] != 3*time.Second {
					t.Errorf("delays %v, want [3s]", delays)
				}
			},
		},
		{
			name:         "Retry-After beyond the retry budget gives up",
			faults:       []fault{{status: http.StatusTooManyRequests, retryAfter: "600"}},
			opts:         []Option{WithRetry(5, time.Minute)},
			wantRequests: 1, wantErr: nil, wantStatus: 429, wantRetryable: true,
		},
		{
			name:         "reset mid-body resumes with Range",
			faults:       []fault{{cutAfter: half}},
			wantRequests: 2,
			check: func(t *testing.T, reqs []seen, res Result, _ []time.Duration) {
				// The second request asks for exactly what the first did not deliver.
				if want := fmt.Sprintf("bytes=%d-", reqs[0].Served); reqs[1].Range != want {
					t.Errorf("second Range %q, want %q", reqs[1].Range, want)
				}
				if reqs[1].IfRange == "" {
					t.Error("resume sent no If-Range")
				}
				if total := reqs[0].Served + reqs[1].Served; total != testSize {
					t.Errorf("server sent %d bytes in all, want %d (no overlap)", total, testSize)
				}
				if res.Transferred != testSize {
					t.Errorf("transferred %d, want %d", res.Transferred, testSize)
				}
			},
		},
		{
			name:         "200 to a range request restarts",
			faults:       []fault{{cutAfter: half}, {ignoreRange: true}},
			wantRequests: 2,
			check: func(t *testing.T, reqs []seen, res Result, _ []time.Duration) {
				if reqs[1].Range == "" || reqs[1].Served != testSize {
					t.Errorf("second request %+v, want a range answered in full", reqs[1])
				}
			},
		},
		{
			name:         "416 restarts without Range",
			faults:       []fault{{cutAfter: half}, {status: http.StatusRequestedRangeNotSatisfiable}},
			wantRequests: 3,
			check: func(t *testing.T, reqs []seen, _ Result, _ []time.Duration) {
				if reqs[1].Range == "" || reqs[2].Range != "" {
					t.Errorf("ranges %q, %q; want a range then none", reqs[1].Range, reqs[2].Range)
				}
			},
		},
		{
			name:         "Content-Range with wrong start restarts",
			faults:       []fault{{cutAfter: half}, {shiftRange: 1}},
			wantRequests: 3,
			check: func(t *testing.T, reqs []seen, _ Result, _ []time.Duration) {
				if reqs[2].Range != "" {
					t.Errorf("third Range %q, want none", reqs[2].Range)
				}
			},
		},
		{
			name:         "digest mismatch once then a fresh download",
			faults:       []fault{corrupt},
			wantRequests: 2,
			check: func(t *testing.T, reqs []seen, _ Result, _ []time.Duration) {
				if reqs[1].Range != "" {
					t.Errorf("fresh download sent Range %q", reqs[1].Range)
				}
			},
		},
		{
			name: "digest mismatch twice is permanent", every: &corrupt,
			wantRequests: 2, wantErr: ErrDigestMismatch,
		},
		{
			name:   "stalled body times out and resumes",
			faults: []fault{{stallAfter: half}},
			opts:   []Option{WithStallTimeout(300 * time.Millisecond)},
			check: func(t *testing.T, reqs []seen, _ Result, _ []time.Duration) {
				if len(reqs) < 2 || reqs[1].Range == "" {
					t.Errorf("requests %+v, want a resumed second request", reqs)
				}
			},
		},
		{name: "404 is permanent", faults: []fault{{status: 404}}, wantRequests: 1, wantStatus: 404},
		{name: "410 is permanent", faults: []fault{{status: 410}}, wantRequests: 1, wantStatus: 410},
		{name: "403 is permanent", faults: []fault{{status: 403}}, wantRequests: 1, wantStatus: 403},
		{name: "501 is permanent", faults: []fault{{status: 501}}, wantRequests: 1, wantStatus: 501},
		{
			name: "retries run out", every: &always503, opts: []Option{WithRetry(3, time.Minute)},
			wantRequests: 3, wantStatus: 503, wantRetryable: true,
		},
		{
			name: "Content-Length over the cap is refused", expect: -1,
			opts:         []Option{WithMaxSize(testSize / 2)},
			wantRequests: 1, wantErr: ErrTooLarge,
		},
		{
			name: "Content-Length other than expected is refused", expect: testSize - 1,
			wantRequests: 1, wantErr: ErrSizeMismatch,
		},
		{
			name: "body without Content-Length over the cap", every: &chunkedAll, expect: -1,
			opts:         []Option{WithMaxSize(testSize / 2)},
			wantRequests: 1, wantErr: ErrTooLarge,
		},
		{
			name: "body without Content-Length longer than expected", every: &chunkedAll, expect: testSize / 2,
			wantRequests: 1, wantErr: ErrSizeMismatch,
		},
		{
			name:         "clean early end is a retryable truncation",
			faults:       []fault{{chunkedCut: half}},
			wantRequests: 2,
			check: func(t *testing.T, reqs []seen, _ Result, _ []time.Duration) {
				if want := fmt.Sprintf("bytes=%d-", half); reqs[1].Range != want {
					t.Errorf("second Range %q, want %q", reqs[1].Range, want)
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := newFileServer(t, content, tt.faults...)
			srv.every = tt.every
			client, delays := newTestClient(tt.opts...)
			req := Request{URL: srv.URL + "/disk.img", Dest: filepath.Join(t.TempDir(), "disk.part"), Name: "disk"}
			switch tt.expect {
			case 0:
				req.ExpectedSize = testSize
			case -1:
			default:
				req.ExpectedSize = tt.expect
			}
			wantDigest := sha256Of(content)
			if tt.alg == digest.SHA512 {
				wantDigest = sha512Of(content)
			}
			if !tt.noHash {
				req.Expected = wantDigest
			}

			res, err := client.Fetch(context.Background(), req)
			reqs := srv.requests()
			if tt.wantRequests != 0 && len(reqs) != tt.wantRequests {
				t.Errorf("server saw %d requests, want %d", len(reqs), tt.wantRequests)
			}
			if tt.wantErr != nil || tt.wantStatus != 0 {
				checkFetchError(t, err, req, tt.wantErr, tt.wantStatus, tt.wantRetryable)
				return
			}
			if err != nil {
				t.Fatalf("Fetch: %v", err)
			}
			checkFile(t, req.Dest, content)
			if res.Size != testSize || res.SHA256 != sha256Of(content) || res.Path != req.Dest {
				t.Errorf("result %+v, want size %d sha256 %s", res, testSize, sha256Of(content))
			}
			if res.Digest != wantDigest {
				t.Errorf("result digest %s, want %s", res.Digest, wantDigest)
			}
			if res.Attempts != len(reqs) {
				t.Errorf("result attempts %d, server saw %d requests", res.Attempts, len(reqs))
			}
			sc, ok := readSidecar(req.Dest)
			if !ok || sc.URL != req.URL || sc.ETag == "" {
				t.Errorf("sidecar %+v (ok %v), want URL and ETag recorded", sc, ok)
			}
			if tt.check != nil {
				tt.check(t, reqs, res, delays.get())
			}
		})
	}
}

func checkFetchError(t *testing.T, err error, req Request, wantErr error, wantStatus int, wantRetryable bool) {
	t.Helper()
	if err == nil {
		t.Fatal("Fetch succeeded, want an error")
	}
	if wantErr != nil && !errors.Is(err, wantErr) {
		t.Errorf("error %v, want %v", err, wantErr)
	}
	var e *Error
	if !errors.As(err, &e) {
		t.Fatalf("error %T %v is not *Error", err, err)
	}
	if e.StatusCode != wantStatus || e.Retryable != wantRetryable {
		t.Errorf("status %d retryable %v, want %d %v (%v)", e.StatusCode, e.Retryable, wantStatus, wantRetryable, err)
	}
	msg := err.Error()
	if !strings.Contains(msg, req.URL) || !strings.Contains(msg, req.Name) {
		t.Errorf("error %q does not name the asset and URL", msg)
	}
	if wantErr != nil {
		// Wrong content is not kept for a resume.
		if _, err := os.Stat(req.Dest); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("partial file still there after %v (stat: %v)", wantErr, err)
		}
	}
}

func checkFile(t *testing.T, path string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(want) || sha256Of(got) != sha256Of(want) {
		t.Fatalf("file has %d bytes (%s), want %d (%s)", len(got), sha256Of(got), len(want), sha256Of(want))
	}
}

// A Fetch cancelled mid-way (as by a crash) leaves a partial that a new
// Client resumes with a conditional range request.
func TestResumeAfterCancel(t *testing.T) {
	content := randomBytes(testSize, 2)
	srv := newFileServer(t, content, fault{stallAfter: testSize / 2})
	dest := filepath.Join(t.TempDir(), "kernel.part")
	req := Request{URL: srv.URL + "/vmlinuz", Dest: dest, Name: "kernel", ExpectedSize: testSize, Expected: sha256Of(content)}

	// Cancel as soon as some bytes are in the file (the first progress
	// call comes after the first write); the stall keeps the first
	// request from finishing in the meantime.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	firstReq := req
	firstReq.Progress = func(p Progress) {
		if p.Done > 0 {
			cancel()
		}
	}
	first, _ := newTestClient()
	_, err := first.Fetch(ctx, firstReq)
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("first Fetch error %v, want context.Canceled", err)
	}
	st, err := os.Stat(dest)
	if err != nil || st.Size() == 0 || st.Size() >= testSize {
		t.Fatalf("partial after cancel: %v, %v; want some but not all bytes", st, err)
	}
	partial := st.Size()
	if _, ok := readSidecar(dest); !ok {
		t.Fatal("no sidecar after cancel")
	}

	second, _ := newTestClient()
	res, err := second.Fetch(context.Background(), req)
	if err != nil {
		t.Fatalf("second Fetch: %v", err)
	}
	checkFile(t, dest, content)
	reqs := srv.requests()
	if len(reqs) != 2 {
		t.Fatalf("server saw %d requests, want 2", len(reqs))
	}
	if want := fmt.Sprintf("bytes=%d-", partial); reqs[1].Range != want || reqs[1].IfRange != etagOf(content) {
		t.Errorf("resume sent Range %q If-Range %q, want %q %q", reqs[1].Range, reqs[1].IfRange, want, etagOf(content))
	}
	if !res.Resumed || res.Transferred != testSize-partial || reqs[1].Served != testSize-partial {
		t.Errorf("resumed %v, transferred %d, served %d; want true, %d, %d",
			res.Resumed, res.Transferred, reqs[1].Served, testSize-partial, testSize-partial)
	}
}

// leavePartial makes a Fetch that fails after half the file and keeps the partial.
func leavePartial(t *testing.T, srv *fileServer, req Request) int64 {
	t.Helper()
	srv.mu.Lock()
	srv.faults = append(srv.faults, fault{cutAfter: testSize / 2})
	srv.mu.Unlock()
	c, _ := newTestClient(WithRetry(1, time.Minute))
	if _, err := c.Fetch(context.Background(), req); !IsRetryable(err) {
		t.Fatalf("first Fetch error %v, want a retryable one", err)
	}
	st, err := os.Stat(req.Dest)
	if err != nil || st.Size() == 0 {
		t.Fatalf("no partial: %v %v", st, err)
	}
	return st.Size()
}

// The server republished the file: If-Range fails, the server sends it all,
// and we restart from zero.
func TestIfRangeChangedETag(t *testing.T) {
	tests := []struct {
		name     string
		expected bool
	}{{"without expected digest", false}, {"with expected digest", true}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			oldContent, newContent := randomBytes(testSize, 3), randomBytes(testSize, 4)
			srv := newFileServer(t, oldContent)
			req := Request{URL: srv.URL + "/disk.img", Dest: filepath.Join(t.TempDir(), "disk.part"), Name: "disk"}
			leavePartial(t, srv, req)
			srv.setContent(newContent)
			if tt.expected {
				req.Expected = sha256Of(newContent)
			}
			c, _ := newTestClient()
			res, err := c.Fetch(context.Background(), req)
			if err != nil {
				t.Fatal(err)
			}
			checkFile(t, req.Dest, newContent)
			reqs := srv.requests()
			last := reqs[len(reqs)-1]
			if tt.expected {
				// The sidecar expected no digest: the partial cannot be trusted and is dropped unasked.
				return
			}
			if last.IfRange != etagOf(oldContent) || last.Served != testSize || res.Resumed {
				t.Errorf("last request %+v resumed %v; want If-Range %s answered in full", last, res.Resumed, etagOf(oldContent))
			}
		})
	}
}

// A partial with a wrong prefix (disk corruption) fails the digest, and the
// one fresh download repairs it.
func TestCorruptPrefixOnDisk(t *testing.T) {
	content := randomBytes(testSize, 5)
	srv := newFileServer(t, content)
	req := Request{URL: srv.URL + "/disk.img", Dest: filepath.Join(t.TempDir(), "disk.part"), Name: "disk", Expected: sha256Of(content), ExpectedSize: testSize}
	n := leavePartial(t, srv, req)
	f, err := os.OpenFile(req.Dest, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteAt([]byte("garbage"), n/2); err != nil {
		t.Fatal(err)
	}
	f.Close()

	c, _ := newTestClient()
	if _, err := c.Fetch(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	checkFile(t, req.Dest, content)
	reqs := srv.requests()
	if len(reqs) != 3 || reqs[1].Range == "" || reqs[2].Range != "" {
		t.Errorf("requests %+v; want cut, resume, fresh download", reqs)
	}
}

// A complete file left behind with its sidecar needs no request at all, and
// concurrent Fetches of one Dest take turns rather than interleave.
func TestConcurrentFetchesOfOneDest(t *testing.T) {
	content := randomBytes(testSize, 6)
	srv := newFileServer(t, content)
	req := Request{URL: srv.URL + "/initrd", Dest: filepath.Join(t.TempDir(), "initrd.part"), Name: "initramfs", Expected: sha256Of(content), ExpectedSize: testSize}
	c, _ := newTestClient()
	var wg sync.WaitGroup
	results := make([]Result, 3)
	errs := make([]error, 3)
	for i := range results {
		wg.Go(func() { results[i], errs[i] = c.Fetch(context.Background(), req) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("Fetch %d: %v", i, err)
		}
		if results[i].SHA256 != sha256Of(content) {
			t.Errorf("Fetch %d digest %s", i, results[i].SHA256)
		}
	}
	checkFile(t, req.Dest, content)
	if n := len(srv.requests()); n != 1 {
		t.Errorf("server saw %d requests, want 1", n)
	}
}

func TestProgress(t *testing.T) {
	content := randomBytes(testSize, 7)
	tests := []struct {
		name   string
		faults []fault
		expect int64
	}{
		{"clean", nil, testSize},
		{"resumed after reset", []fault{{cutAfter: testSize / 3}}, testSize},
		{"unknown size", nil, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := newFileServer(t, content, tt.faults...)
			var calls []Progress
			c, _ := newTestClient(WithBufferSize(64 << 10))
			_, err := c.Fetch(context.Background(), Request{
				URL: srv.URL + "/f", Dest: filepath.Join(t.TempDir(), "f.part"), ExpectedSize: tt.expect,
				Progress: func(p Progress) { calls = append(calls, p) },
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(calls) == 0 {
				t.Fatal("no progress calls")
			}
			for i := 1; i < len(calls); i++ {
				if calls[i].Done < calls[i-1].Done {
					t.Errorf("progress went back: %+v then %+v", calls[i-1], calls[i])
				}
			}
			last := calls[len(calls)-1]
			if last.Done != testSize || last.Total != testSize || last.BytesPerSecond <= 0 {
				t.Errorf("final progress %+v, want Done=Total=%d and a rate", last, testSize)
			}
		})
	}
}

func TestUserAgent(t *testing.T) {
	tests := []struct {
		name string
		opts []Option
		want string
	}{
		{"default", nil, "vmprep/" + version.Short()},
		{"custom", []Option{WithUserAgent("fleet-prep/7")}, "fleet-prep/7"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv := newFileServer(t, randomBytes(1000, 8))
			c, _ := newTestClient(tt.opts...)
			if _, err := c.Fetch(context.Background(), Request{URL: srv.URL, Dest: filepath.Join(t.TempDir(), "x")}); err != nil {
				t.Fatal(err)
			}
			if got := srv.requests()[0].UserAgent; got != tt.want {
				t.Errorf("User-Agent %q, want %q", got, tt.want)
			}
		})
	}
}

// The default transport sends requests through the configured proxy (as
// http.ProxyFromEnvironment would pick from HTTP_PROXY).
func TestProxy(t *testing.T) {
	content := randomBytes(testSize, 9)
	origin := newFileServer(t, content)
	var mu sync.Mutex
	var proxied []string
	proxy := newProxy(t, func(u string) { mu.Lock(); proxied = append(proxied, u); mu.Unlock() })

	env := map[string]string{"HTTP_PROXY": proxy.URL}
	proxyFunc := func(r *http.Request) (*url.URL, error) {
		if r.URL.Scheme == "http" && env["HTTP_PROXY"] != "" {
			return url.Parse(env["HTTP_PROXY"])
		}
		return nil, nil
	}
	c, _ := newTestClient(WithProxy(proxyFunc))
	req := Request{URL: origin.URL + "/disk.img", Dest: filepath.Join(t.TempDir(), "d"), Expected: sha256Of(content)}
	if _, err := c.Fetch(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	checkFile(t, req.Dest, content)
	mu.Lock()
	defer mu.Unlock()
	if len(proxied) != 1 || proxied[0] != req.URL {
		t.Errorf("proxy saw %q, want [%q]", proxied, req.URL)
	}
}

func TestInvalidRequest(t *testing.T) {
	dir := t.TempDir()
	tests := []struct {
		name string
		req  Request
		want string
	}{
		{"empty URL", Request{Dest: filepath.Join(dir, "a")}, "empty URL"},
		{"ftp URL", Request{URL: "ftp://example.org/x", Dest: filepath.Join(dir, "a")}, "scheme"},
		{"no host", Request{URL: "http:///x", Dest: filepath.Join(dir, "a")}, "no host"},
		{"empty dest", Request{URL: "http://127.0.0.1/x"}, "destination"},
		{"negative size", Request{URL: "http://127.0.0.1/x", Dest: filepath.Join(dir, "a"), ExpectedSize: -1}, "negative"},
		{"md5 digest", Request{URL: "http://127.0.0.1/x", Dest: filepath.Join(dir, "a"), Expected: digest.Digest{Algorithm: "md5", Hex: "00"}}, "unsupported"},
		{"short digest", Request{URL: "http://127.0.0.1/x", Dest: filepath.Join(dir, "a"), Expected: digest.Digest{Algorithm: digest.SHA256, Hex: "00"}}, "hex digits"},
		{"missing directory", Request{URL: "http://127.0.0.1/x", Dest: filepath.Join(dir, "no", "such", "a")}, "no such file"},
	}
	c, _ := newTestClient()
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Fetch(context.Background(), tt.req)
			var e *Error
			if !errors.As(err, &e) || e.Retryable || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %v, want a permanent *Error mentioning %q", err, tt.want)
			}
		})
	}
}

func TestSidecarLifecycle(t *testing.T) {
	content := randomBytes(1<<20, 10)
	srv := newFileServer(t, content)
	dest := filepath.Join(t.TempDir(), "s.part")
	c, _ := newTestClient()
	req := Request{URL: srv.URL + "/s", Dest: dest, Expected: sha256Of(content)}
	if _, err := c.Fetch(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(SidecarPath(dest))
	if err != nil {
		t.Fatal(err)
	}
	var sc map[string]any
	if err := json.Unmarshal(b, &sc); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{"url": req.URL, "etag": etagOf(content), "expected": req.Expected.String(), "size": float64(len(content))} {
		if sc[k] != want {
			t.Errorf("sidecar %s = %v, want %v", k, sc[k], want)
		}
	}
	for range 2 { // removing twice is fine
		if err := RemoveSidecar(dest); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat(SidecarPath(dest)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("sidecar still there: %v", err)
	}
}

// A partial whose sidecar is missing, unreadable or about something else
// cannot be trusted and is downloaded afresh.
func TestUntrustedPartialRestarts(t *testing.T) {
	content := randomBytes(1<<20, 11)
	srv := newFileServer(t, content)
	tests := []struct {
		name    string
		sidecar string // "" for none
	}{
		{"no sidecar", ""},
		{"garbage sidecar", "{not json"},
		{"sidecar for another URL", `{"url":"http://127.0.0.1:1/other","etag":"\"x\""}`},
		{"sidecar without validators", `{"url":"` + srv.URL + `"}`},
		{"sidecar with only a weak ETag", `{"url":"` + srv.URL + `","etag":"W/\"x\""}`},
		{"huge sidecar", `{"url":"` + srv.URL + `","etag":"` + strings.Repeat("x", maxSidecarSize) + `"}`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dest := filepath.Join(t.TempDir(), "p.part")
			if err := os.WriteFile(dest, content[:1000], 0o644); err != nil {
				t.Fatal(err)
			}
			if tt.sidecar != "" {
				if err := os.WriteFile(SidecarPath(dest), []byte(tt.sidecar), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			before := len(srv.requests())
			c, _ := newTestClient()
			res, err := c.Fetch(context.Background(), Request{URL: srv.URL, Dest: dest})
			if err != nil {
				t.Fatal(err)
			}
			checkFile(t, dest, content)
			reqs := srv.requests()[before:]
			if res.Resumed || len(reqs) != 1 || reqs[0].Range != "" {
				t.Errorf("resumed %v, requests %+v; want one fresh download", res.Resumed, reqs)
			}
		})
	}
}

// A server that delivers a little and then drops the connection, every
// time, exhausts the retry budget: so little progress does not reset it.
func TestDribblingServerGivesUp(t *testing.T) {
	srv := newFileServer(t, randomBytes(testSize, 13))
	srv.every = &fault{cutAfter: 1000}
	c, _ := newTestClient(WithRetry(3, time.Minute))
	_, err := c.Fetch(context.Background(), Request{URL: srv.URL, Dest: filepath.Join(t.TempDir(), "d"), ExpectedSize: testSize})
	var e *Error
	if !errors.As(err, &e) || !e.Retryable || e.Attempts != 3 {
		t.Fatalf("error %v, want a retryable *Error after 3 attempts", err)
	}
	if n := len(srv.requests()); n != 3 {
		t.Errorf("server saw %d requests, want 3", n)
	}
}

// A server that cuts every download and refuses every resume makes us
// restart from zero each time: the bytes regained do not renew the retry
// budget, so this ends.
func TestRestartLoopGivesUp(t *testing.T) {
	srv := newFileServer(t, randomBytes(testSize, 14))
	srv.every = &fault{cutAfter: 2 * progressReset, rangeStatus: http.StatusRequestedRangeNotSatisfiable}
	c, _ := newTestClient(WithRetry(3, time.Minute))
	_, err := c.Fetch(context.Background(), Request{URL: srv.URL, Dest: filepath.Join(t.TempDir(), "d"), ExpectedSize: testSize})
	if !IsRetryable(err) {
		t.Fatalf("error %v, want a retryable one", err)
	}
	// The first cut renews the budget and counts as failure 1; failures 2
	// and 3 each take a cycle of (range refused, full request cut).
	if n := len(srv.requests()); n != 1+2*2 {
		t.Errorf("server saw %d requests, want %d", n, 1+2*2)
	}
}

// Certificate errors are permanent: retrying cannot fix them.
func TestUntrustedCertificateIsPermanent(t *testing.T) {
	var hits atomic.Int32
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) { hits.Add(1) }))
	srv.Config.ErrorLog = log.New(io.Discard, "", 0) // the failed handshake is expected
	srv.StartTLS()
	defer srv.Close()
	c, _ := newTestClient()
	_, err := c.Fetch(context.Background(), Request{URL: srv.URL, Dest: filepath.Join(t.TempDir(), "t"), Name: "disk"})
	var e *Error
	if !errors.As(err, &e) || e.Retryable || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("error %v, want a permanent certificate error", err)
	}
	if hits.Load() != 0 {
		t.Errorf("handler reached %d times", hits.Load())
	}
}

// TestCancelDuringBackoff: cancelling a Fetch while it waits to retry ends
// the wait. The wait is an hour: a wait that ignored the cancellation would
// hold Fetch far past the test's deadline.
func TestCancelDuringBackoff(t *testing.T) {
	t.Parallel()
	srv := newFileServer(t, randomBytes(1000, 12))
	srv.every = &fault{status: http.StatusServiceUnavailable}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	c := New(WithBackoff(time.Hour, time.Hour), WithRetry(3, 3*time.Hour))
	waiting := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		_, err := c.Fetch(ctx, Request{URL: srv.URL, Dest: filepath.Join(t.TempDir(), "c"),
			OnRetry: func(Retry) { // before the wait
				select {
				case <-waiting:
				default:
					close(waiting)
				}
			}})
		done <- err
	}()
	select {
	case <-waiting:
	case err := <-done:
		t.Fatalf("Fetch ended before waiting to retry: %v", err)
	case <-time.After(time.Minute):
		t.Fatal("the first attempt never failed")
	}
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "wait to retry") {
			t.Fatalf("error %v, want context.Canceled ending the wait to retry", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Fetch still waits to retry after its context was cancelled")
	}
	if n := len(srv.requests()); n != 1 {
		t.Errorf("server saw %d requests, want 1", n)
	}
}

func TestParseContentRange(t *testing.T) {
	tests := []struct {
		in                string
		start, end, total int64
		ok                bool
	}{
		{"bytes 0-99/100", 0, 99, 100, true},
		{"bytes 10-99/*", 10, 99, -1, true},
		{"bytes 10-99/99", 0, 0, 0, false},
		{"bytes -1-99/100", 0, 0, 0, false},
		{"bytes 1-2-3/4", 0, 0, 0, false},
		{"items 0-1/2", 0, 0, 0, false},
		{"bytes */100", 0, 0, 0, false},
		{"bytes 0-99999999999999999999/1", 0, 0, 0, false},
		{"", 0, 0, 0, false},
	}
	for _, tt := range tests {
		s, e, tot, err := parseContentRange(tt.in)
		if (err == nil) != tt.ok || (tt.ok && (s != tt.start || e != tt.end || tot != tt.total)) {
			t.Errorf("parseContentRange(%q) = %d %d %d %v", tt.in, s, e, tot, err)
		}
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 27, 12, 0, 0, 0, time.UTC)
	tests := []struct {
		in   string
		want time.Duration
	}{
		{"", 0},
		{"7", 7 * time.Second},
		{" 7 ", 7 * time.Second},
		{"0", 0},
		{"-5", 0},
		{"99999999999999999", 24 * time.Hour},
		{now.Add(90 * time.Second).Format(http.TimeFormat), 90 * time.Second},
		{now.Add(-time.Hour).Format(http.TimeFormat), 0},
		{"soon", 0},
	}
	for _, tt := range tests {
		if got := neterr.RetryAfter(tt.in, now); got != tt.want {
			t.Errorf("neterr.RetryAfter(%q) = %v, want %v", tt.in, got, tt.want)
		}
	}
}

func TestErrorMessage(t *testing.T) {
	tests := []struct {
		err  *Error
		want string
	}{
		{&Error{Name: "kernel", URL: "http://h/k", Op: "request", StatusCode: 404, Err: errors.New("Not Found")},
			"download kernel from http://h/k: request: HTTP 404: Not Found (permanent)"},
		{&Error{URL: "http://h/d", Op: "read body", Retryable: true, Attempts: 8, Err: errors.New("unexpected EOF")},
			"download from http://h/d: read body: unexpected EOF (retryable, gave up after 8 attempts)"},
	}
	for _, tt := range tests {
		if got := tt.err.Error(); got != tt.want {
			t.Errorf("Error() = %q, want %q", got, tt.want)
		}
	}
}

// Memory does not grow with the file: a 32 MiB download allocates far less
// than 32 MiB in all (client and test server together). Not parallel, so
// that other tests' allocations do not count.
func TestMemoryBounded(t *testing.T) {
	const size = 32 << 20
	content := randomBytes(size, 15)
	srv := newFileServer(t, content)
	c, _ := newTestClient()
	req := Request{URL: srv.URL, Dest: filepath.Join(t.TempDir(), "m"), Expected: sha512Of(content), ExpectedSize: size}
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	if _, err := c.Fetch(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	runtime.ReadMemStats(&after)
	alloc := after.TotalAlloc - before.TotalAlloc
	t.Logf("allocated %d bytes", alloc)
	if alloc > size/4 {
		t.Errorf("allocated %d bytes for a %d-byte download", alloc, size)
	}
}

// countingTransport counts round trips and records Accept-Encoding.
type countingTransport struct {
	mu        sync.Mutex
	trips     int
	encodings []string
	next      http.RoundTripper
}

func (c *countingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	c.mu.Lock()
	c.trips++
	c.encodings = append(c.encodings, r.Header.Get("Accept-Encoding"))
	c.mu.Unlock()
	return c.next.RoundTrip(r)
}

// A caller's HTTP client is used as given, and we ask for identity encoding
// so that its transport never decompresses behind our back.
func TestWithHTTPClient(t *testing.T) {
	content := randomBytes(1<<20, 16)
	srv := newFileServer(t, content, fault{cutAfter: 1 << 19})
	tr := &countingTransport{next: &http.Transport{}}
	c, _ := newTestClient(WithHTTPClient(&http.Client{Transport: tr}))
	req := Request{URL: srv.URL, Dest: filepath.Join(t.TempDir(), "h"), Expected: sha256Of(content)}
	if _, err := c.Fetch(context.Background(), req); err != nil {
		t.Fatal(err)
	}
	checkFile(t, req.Dest, content)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	if tr.trips != 2 || tr.encodings[0] != "identity" || tr.encodings[1] != "identity" {
		t.Errorf("round trips %d with Accept-Encoding %q; want 2 with identity", tr.trips, tr.encodings)
	}
}

// TestRedirectToUnsupportedScheme: a redirect to file:// (or ftp://) is
// refused by the transport every time; it is permanent at once, not retried
// for the whole retry budget.
func TestRedirectToUnsupportedScheme(t *testing.T) {
	for _, target := range []string{"file:///etc/passwd", "ftp://127.0.0.1/disk.img"} {
		t.Run(target, func(t *testing.T) {
			var hits atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				hits.Add(1)
				http.Redirect(w, r, target, http.StatusFound)
			}))
			defer srv.Close()
			c, delays := newTestClient()
			req := Request{URL: srv.URL + "/disk.img", Dest: filepath.Join(t.TempDir(), "d"), Name: "disk"}
			_, err := c.Fetch(context.Background(), req)
			var e *Error
			if !errors.As(err, &e) || e.Retryable || !e.Permanent() {
				t.Fatalf("error %v, want a permanent *Error", err)
			}
			if !strings.Contains(err.Error(), target) || !strings.Contains(err.Error(), "unsupported URL scheme") {
				t.Errorf("error %q does not name the redirect target and its scheme", err)
			}
			if n := hits.Load(); n != 1 || len(delays.get()) != 0 {
				t.Errorf("%d requests and %d waits, want one request and no retry", n, len(delays.get()))
			}
		})
	}
}

// TestShortBodyWithoutRangeSupport: a server that announces more bytes than
// it sends and answers every range request with the whole file cannot be
// resumed; once the retries are spent the failure is permanent and says why.
// A server that resumes stays retryable (TestDribblingServerGivesUp).
func TestShortBodyWithoutRangeSupport(t *testing.T) {
	srv := newFileServer(t, randomBytes(testSize, 21))
	srv.every = &fault{cutAfter: testSize / 2, ignoreRange: true}
	c, _ := newTestClient(WithRetry(4, time.Minute))
	req := Request{URL: srv.URL + "/disk.img", Dest: filepath.Join(t.TempDir(), "d"), Name: "disk", ExpectedSize: testSize}
	_, err := c.Fetch(context.Background(), req)
	var e *Error
	if !errors.As(err, &e) || e.Retryable || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("error %v, want a permanent *Error for a short body", err)
	}
	if !strings.Contains(err.Error(), "cannot resume") || e.Attempts != 4 {
		t.Errorf("error %q after %d attempts, want the cause after 4", err, e.Attempts)
	}
	for i, r := range srv.requests()[1:] {
		if r.Range == "" {
			t.Errorf("request %d did not try to resume", i+2)
		}
	}
}

// TestCancelledFetchNamesLastError: when ctx ends an attempt after earlier
// attempts failed, the error says what was failing, not only "context
// canceled".
func TestCancelledFetchNamesLastError(t *testing.T) {
	stalled := make(chan struct{})
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if n.Add(1) == 1 {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		w.Header().Set("Content-Length", "1000")
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		close(stalled)
		<-r.Context().Done()
	}))
	defer srv.Close()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { <-stalled; cancel() }()
	c, _ := newTestClient()
	_, err := c.Fetch(ctx, Request{URL: srv.URL, Dest: filepath.Join(t.TempDir(), "d"), Name: "disk"})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("error %v, want context.Canceled", err)
	}
	if !strings.Contains(err.Error(), "last error: request: HTTP 502") {
		t.Errorf("error %q does not name the last failure (HTTP 502)", err)
	}
}

// TestOnRetrySaysWhenAndHowMany: each retried failure is announced with its
// cause, the wait before the next attempt, and the failures in a row so far
// of those allowed.
func TestOnRetrySaysWhenAndHowMany(t *testing.T) {
	content := []byte(strings.Repeat("v", 4096))
	srv := newFileServer(t, content, fault{status: http.StatusServiceUnavailable}, fault{status: http.StatusBadGateway})
	c, delays := newTestClient(WithRetry(5, time.Hour))
	var retries []Retry
	_, err := c.Fetch(context.Background(), Request{URL: srv.URL, Dest: filepath.Join(t.TempDir(), "d"), Name: "disk",
		OnRetry: func(r Retry) { retries = append(retries, r) }})
	if err != nil {
		t.Fatal(err)
	}
	if len(retries) != 2 {
		t.Fatalf("%d retries announced, want 2: %+v", len(retries), retries)
	}
	for i, r := range retries {
		if r.Failures != i+1 || r.MaxFailures != 5 || r.In != delays.get()[i] || !strings.Contains(r.Err.Error(), []string{"503", "502"}[i]) {
			t.Errorf("retry %d: %+v (waited %v)", i, r, delays.get())
		}
	}
}
