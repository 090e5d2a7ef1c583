package download

import (
	"bytes"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/vmprep/vmprep/pkg/digest"
)

// fault is what the test server does to one request.
type fault struct {
	status      int    // reply with this status and no body
	retryAfter  string // Retry-After header with status
	cutAfter    int64  // abort the connection after this many body bytes (0: off)
	stallAfter  int64  // stop sending after this many body bytes until the client gives up (0: off)
	ignoreRange bool   // answer 200 with the whole file
	shiftRange  int64  // answer a range request with a Content-Range starting this much later
	corrupt     bool   // flip one byte in the middle of the file
	chunkedCut  int64  // send this many bytes without Content-Length, then end cleanly (0: off)
	chunkedAll  bool   // send everything without Content-Length
	rangeStatus int    // reply to range requests with this status and no body
}

// seen records one request as the server saw it.
type seen struct {
	Range, IfRange, UserAgent string
	Served                    int64 // body bytes written
}

// fileServer serves one file with ETag, Last-Modified and Range support
// (http.ServeContent) and injects faults per request index.
type fileServer struct {
	*httptest.Server
	t *testing.T

	mu      sync.Mutex
	content []byte
	etag    string
	faults  []fault // faults[i] applies to request i
	every   *fault  // applies to requests beyond faults, if set
	log     []*seen
	// inflight counts running handlers; requests waits for it to reach
	// zero so that byte counts are final when a test reads them.
	inflight int
	idle     *sync.Cond
}

var modTime = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func newFileServer(t *testing.T, content []byte, faults ...fault) *fileServer {
	t.Helper()
	s := &fileServer{t: t, content: content, etag: etagOf(content), faults: faults}
	s.idle = sync.NewCond(&s.mu)
	s.Server = httptest.NewServer(http.HandlerFunc(s.handle))
	t.Cleanup(s.Close)
	return s
}

func etagOf(b []byte) string {
	sum := sha256.Sum256(b)
	return `"` + hex.EncodeToString(sum[:8]) + `"`
}

// setContent replaces the file (and its ETag), as a republished image would.
func (s *fileServer) setContent(b []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.content, s.etag = b, etagOf(b)
}

func (s *fileServer) requests() []seen {
	s.mu.Lock()
	defer s.mu.Unlock()
	for s.inflight > 0 {
		s.idle.Wait()
	}
	out := make([]seen, len(s.log))
	for i, r := range s.log {
		out[i] = seen{Range: r.Range, IfRange: r.IfRange, UserAgent: r.UserAgent, Served: atomic.LoadInt64(&r.Served)}
	}
	return out
}

func (s *fileServer) handle(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	i := len(s.log)
	rec := &seen{Range: r.Header.Get("Range"), IfRange: r.Header.Get("If-Range"), UserAgent: r.UserAgent()}
	s.log = append(s.log, rec)
	s.inflight++
	defer func() {
		s.mu.Lock()
		s.inflight--
		s.idle.Broadcast()
		s.mu.Unlock()
	}()
	var f fault
	if i < len(s.faults) {
		f = s.faults[i]
	} else if s.every != nil {
		f = *s.every
	}
	content, etag := s.content, s.etag
	s.mu.Unlock()

	if f.rangeStatus != 0 && r.Header.Get("Range") != "" {
		w.WriteHeader(f.rangeStatus)
		return
	}
	if f.status != 0 {
		if f.retryAfter != "" {
			w.Header().Set("Retry-After", f.retryAfter)
		}
		w.WriteHeader(f.status)
		return
	}
	if f.corrupt {
		content = bytes.Clone(content)
		content[len(content)/2] ^= 0xff
	}
	cw := &countingWriter{ResponseWriter: w, rec: rec, cutAfter: f.cutAfter, stallAfter: f.stallAfter, req: r}
	w.Header().Set("ETag", etag)
	w.Header().Set("Last-Modified", modTime.Format(http.TimeFormat))
	switch {
	case f.chunkedCut > 0 || f.chunkedAll:
		n := int64(len(content))
		if f.chunkedCut > 0 {
			n = f.chunkedCut
		}
		w.WriteHeader(http.StatusOK)
		cw.Write(content[:n])
	case f.shiftRange != 0 && r.Header.Get("Range") != "":
		start, err := strconv.ParseInt(r.Header.Get("Range")[len("bytes="):len(r.Header.Get("Range"))-1], 10, 64)
		if err != nil {
			s.t.Errorf("test server: bad Range %q", r.Header.Get("Range"))
			return
		}
		start += f.shiftRange
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", start, len(content)-1, len(content)))
		w.Header().Set("Content-Length", strconv.Itoa(len(content)-int(start)))
		w.WriteHeader(http.StatusPartialContent)
		cw.Write(content[start:])
	case f.ignoreRange:
		w.Header().Set("Content-Length", strconv.Itoa(len(content)))
		w.WriteHeader(http.StatusOK)
		cw.Write(content)
	default:
		http.ServeContent(cw, r, "", modTime, bytes.NewReader(content))
	}
}

// countingWriter counts body bytes and injects cuts and stalls.
type countingWriter struct {
	http.ResponseWriter
	rec                  *seen
	cutAfter, stallAfter int64
	req                  *http.Request
}

func (c *countingWriter) Write(p []byte) (int, error) {
	done := atomic.LoadInt64(&c.rec.Served)
	limit := int64(-1)
	if c.cutAfter > 0 {
		limit = c.cutAfter
	} else if c.stallAfter > 0 {
		limit = c.stallAfter
	}
	if limit >= 0 && done+int64(len(p)) > limit {
		p = p[:limit-done]
	}
	n, err := c.ResponseWriter.Write(p)
	atomic.AddInt64(&c.rec.Served, int64(n))
	if err != nil || limit < 0 || done+int64(n) < limit {
		return n, err
	}
	c.ResponseWriter.(http.Flusher).Flush()
	if c.cutAfter > 0 {
		panic(http.ErrAbortHandler) // the server closes the connection mid-body
	}
	<-c.req.Context().Done()
	return n, c.req.Context().Err()
}

// randomBytes returns n deterministic pseudo-random bytes.
func randomBytes(n int, seed uint64) []byte {
	b := make([]byte, n)
	r := rand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 7})
	r.Read(b)
	return b
}

func sha256Of(b []byte) digest.Digest {
	sum := sha256.Sum256(b)
	return digest.Digest{Algorithm: digest.SHA256, Hex: hex.EncodeToString(sum[:])}
}

func sha512Of(b []byte) digest.Digest {
	sum := sha512.Sum512(b)
	return digest.Digest{Algorithm: digest.SHA512, Hex: hex.EncodeToString(sum[:])}
}

var _ io.Writer = (*countingWriter)(nil)
