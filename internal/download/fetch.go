package download

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"strings"
	"time"

	"github.com/vmprep/vmprep/internal/atomicfile"
	"github.com/vmprep/vmprep/internal/filelock"
	"github.com/vmprep/vmprep/internal/writeback"
	"github.com/vmprep/vmprep/pkg/digest"
)

// Request names one file to download.
type Request struct {
	URL string
	// Dest is the partial file. Its sidecar Dest+".meta" (JSON: URL, ETag,
	// Last-Modified, expected digest, size) lets a later process resume it.
	Dest string
	// ExpectedSize is the exact size in bytes, 0 if unknown.
	ExpectedSize int64
	// Expected is checked at the end if set (sha256 or sha512).
	Expected digest.Digest
	// Progress, if set, is called at most every ~200ms and once at the end
	// with Done equal to the size. Done only goes down when the download
	// restarts from zero. It runs on the downloading goroutine: keep it quick.
	Progress func(Progress)
	// Name is the asset name used in errors and logs (e.g. "kernel").
	Name string
	// OnRetry, if set, is called with each failure that is about to be
	// retried, before the wait: the caller can tell its user what is going
	// wrong while the download keeps trying.
	OnRetry func(Retry)
}

// Retry describes a failed attempt that is about to be retried.
type Retry struct {
	Err error
	// In is the wait before the next attempt.
	In time.Duration
	// Failures counts the attempts in a row that made no progress, of
	// MaxFailures allowed (bytes gained start the count again).
	Failures, MaxFailures int
}

// Progress reports how far a download is.
type Progress struct {
	Done  int64 // bytes received, including a resumed prefix
	Total int64 // full size, 0 if unknown
	// BytesPerSecond is the mean network rate of this Fetch so far.
	BytesPerSecond float64
}

// Result describes a completed download.
type Result struct {
	Path   string // Request.Dest, fsynced
	Size   int64
	SHA256 digest.Digest
	// Digest is in Expected's algorithm (equal to SHA256 if Expected is unset or sha256).
	Digest digest.Digest
	// Resumed is true if bytes already on disk from an earlier Fetch were kept.
	Resumed bool
	// Transferred counts body bytes received over the network by this Fetch.
	Transferred int64
	// Attempts counts HTTP requests made.
	Attempts int
	// Stat is the file's stat taken after the final fsync, while this
	// Fetch still held the file's lock: the file whose every byte it
	// hashed (a content store may then skip hashing it again, see
	// content.Store.RecordHashed). Nil on failure.
	Stat os.FileInfo
}

const progressInterval = 200 * time.Millisecond

// Fetch downloads req.URL to req.Dest, resuming a partial file left there by
// an earlier Fetch of the same URL, retrying transient failures, and
// checking req.ExpectedSize and req.Expected. On success the file is fsynced
// and left at req.Dest with its sidecar; the caller renames it into place
// and then calls RemoveSidecar.
//
// Errors are *Error. When the content itself is wrong (ErrDigestMismatch,
// ErrSizeMismatch, ErrTooLarge) the partial file and sidecar are removed;
// otherwise — including on ctx cancellation — they stay for a later resume.
// Concurrent Fetches of one Dest (also across processes) take turns.
func (c *Client) Fetch(ctx context.Context, req Request) (res Result, err error) {
	fe := &fetch{c: c, req: req}
	if err := fe.validate(); err != nil {
		return Result{}, err
	}
	// Serialise fetches of the same file: a second caller waits, then
	// finds the file complete (or resumes it).
	lock, err := filelock.Acquire(ctx, req.Dest, filelock.MaxPoll(50*time.Millisecond))
	if err != nil {
		return Result{}, fe.permanent("lock", 0, err)
	}
	defer lock.Unlock()

	f, err := os.OpenFile(req.Dest, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return Result{}, fe.permanent("open", 0, err)
	}
	defer f.Close()
	fe.f = f
	// A Fetch that ends early (cancelled by ^C, a deadline, a failure) leaves
	// its bytes resumable: what it wrote reaches the disk before it returns,
	// so the process may exit or the machine stop right after. The sidecar
	// is already durable (written atomically before any body byte).
	defer func() {
		if err != nil && fe.have > 0 {
			_ = atomicfile.Sync(f)
		}
	}()

	fe.sha256, _ = digest.SHA256.New()
	hashes := []hash.Hash{fe.sha256}
	if req.Expected.Algorithm == digest.SHA512 {
		fe.alt, _ = digest.SHA512.New()
		hashes = append(hashes, fe.alt)
	}
	fe.pipe = newHashPipe(c.ringBuffers, c.bufferSize, hashes...)
	defer fe.pipe.close()
	fe.wb = writeback.Start(f, writebackChunk)
	defer fe.wb.Close()
	fe.start = time.Now()

	if err := fe.loadPartial(ctx); err != nil {
		return fe.result(), err
	}
	for round := 0; ; round++ {
		if err := fe.transfer(ctx); err != nil {
			return fe.result(), fe.finalError(err)
		}
		fe.pipe.sync()
		got := fe.sha256Digest()
		if fe.alt != nil {
			got = digest.FromHash(digest.SHA512, fe.alt)
		}
		if !req.Expected.IsZero() && got != req.Expected {
			if round == 0 {
				// One fresh download from zero: a bad prefix from an earlier
				// process or a corrupt transfer should not fail the asset.
				c.log.Warn("digest mismatch, downloading again from zero",
					"asset", req.Name, "url", req.URL, "expected", req.Expected, "got", got)
				if err := fe.restart(); err != nil {
					return fe.result(), err
				}
				continue
			}
			return fe.result(), fe.finalError(fe.permanent("verify", 0,
				fmt.Errorf("%w: expected %s, got %s (%d bytes)", ErrDigestMismatch, req.Expected, got, fe.have)))
		}
		if err := atomicfile.Sync(f); err != nil {
			return fe.result(), fe.permanent("fsync", 0, err)
		}
		fe.report(fe.have, 0, true)
		res := fe.result()
		res.Size = fe.have
		res.SHA256 = fe.sha256Digest()
		res.Digest = got
		if res.Stat, err = f.Stat(); err != nil {
			return fe.result(), fe.permanent("stat", 0, err)
		}
		return res, nil
	}
}

// writebackChunk is how much newly written data makes us ask the kernel to
// start writing it to disk. Doing so during the download leaves little for
// the final fsync, which would otherwise flush the whole file at the end.
const writebackChunk = 32 << 20

// fetch is the state of one Fetch across its attempts.
type fetch struct {
	c    *Client
	req  Request
	f    *os.File
	pipe *hashPipe
	wb   *writeback.Writeback

	sha256 hash.Hash
	alt    hash.Hash // the expected algorithm's hash when it is not SHA-256

	have  int64   // bytes in the file, all written and submitted for hashing
	total int64   // full size if known, else 0
	meta  sidecar // what the first `have` bytes are a prefix of
	// reserved is how much disk space was preallocated, so we do it once.
	reserved int64

	resumed     bool
	fromDisk    bool // have > 0 came from an earlier Fetch and was not yet confirmed by the server
	noResume    bool // the server answered a range request with the whole file
	transferred int64
	attempts    int
	start       time.Time
	lastReport  time.Time
}

func (fe *fetch) validate() error {
	r := fe.req
	switch {
	case r.URL == "":
		return fe.permanent("validate request", 0, errors.New("empty URL"))
	case r.Dest == "":
		return fe.permanent("validate request", 0, errors.New("empty destination path"))
	case r.ExpectedSize < 0:
		return fe.permanent("validate request", 0, fmt.Errorf("negative expected size %d", r.ExpectedSize))
	}
	if err := checkURL(r.URL); err != nil {
		return fe.permanent("validate request", 0, err)
	}
	if !r.Expected.IsZero() {
		d, err := digest.New(r.Expected.Algorithm, r.Expected.Hex)
		if err != nil {
			return fe.permanent("validate request", 0, fmt.Errorf("expected digest: %w", err))
		}
		fe.req.Expected = d // normalised, so that it compares equal to what we compute
	}
	return nil
}

// limit is the most bytes the file may have.
func (fe *fetch) limit() int64 {
	if fe.req.ExpectedSize > 0 {
		return fe.req.ExpectedSize
	}
	return fe.c.maxSize
}

// tooBig builds the error for a file that exceeds limit().
func (fe *fetch) tooBig(what string, n int64) *Error {
	if fe.req.ExpectedSize > 0 {
		return fe.permanent("check size", 0, fmt.Errorf("%w: %s %d bytes, expected %d", ErrSizeMismatch, what, n, fe.req.ExpectedSize))
	}
	return fe.permanent("check size", 0, fmt.Errorf("%w: %s %d bytes, limit %d", ErrTooLarge, what, n, fe.c.maxSize))
}

// loadPartial keeps what an earlier Fetch left at Dest if its sidecar
// describes the same download, re-hashing it from disk; otherwise it empties the file.
func (fe *fetch) loadPartial(ctx context.Context) error {
	st, err := fe.f.Stat()
	if err != nil {
		return fe.permanent("stat", 0, err)
	}
	size := st.Size()
	sc, ok := readSidecar(fe.req.Dest)
	reason := ""
	switch {
	case size == 0:
		reason = "empty"
	case !ok:
		reason = "no readable sidecar"
	case sc.URL != fe.req.URL:
		reason = "sidecar is for another URL"
	case !fe.req.Expected.IsZero() && !sc.Expected.IsZero() && sc.Expected != fe.req.Expected:
		reason = "sidecar expects another digest"
	case fe.req.ExpectedSize > 0 && sc.Size > 0 && sc.Size != fe.req.ExpectedSize:
		reason = "sidecar records another size"
	case size > fe.limit():
		reason = "partial file longer than the expected size"
	case (sc.ETag == "" || strings.HasPrefix(sc.ETag, "W/")) && sc.LastModified == "" && fe.req.Expected.IsZero():
		// Nothing would tell us if the server's file changed.
		reason = "no validator and no expected digest"
	}
	if reason != "" {
		if size > 0 {
			fe.c.log.Info("discarding partial download", "asset", fe.req.Name, "path", fe.req.Dest, "bytes", size, "reason", reason)
		}
		return fe.restart()
	}
	if err := fe.rehash(ctx, size); err != nil {
		return err
	}
	fe.meta = sc
	fe.total = max(fe.req.ExpectedSize, sc.Size)
	fe.resumed, fe.fromDisk = true, true
	fe.c.log.Info("resuming partial download", "asset", fe.req.Name, "path", fe.req.Dest, "bytes", size)
	return nil
}

// rehash feeds the first n bytes of the file through the hash pipe.
func (fe *fetch) rehash(ctx context.Context, n int64) error {
	if _, err := fe.f.Seek(0, io.SeekStart); err != nil {
		return fe.permanent("read partial", 0, err)
	}
	r := io.LimitReader(fe.f, n)
	for {
		if err := ctx.Err(); err != nil {
			return fe.permanent("read partial", 0, err)
		}
		c := fe.pipe.get()
		m, err := io.ReadFull(r, c.buf)
		fe.pipe.submit(c, m)
		fe.have += int64(m)
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			break
		}
		if err != nil {
			return fe.permanent("read partial", 0, err)
		}
	}
	if fe.have != n {
		return fe.permanent("read partial", 0, fmt.Errorf("file shrank to %d bytes while reading %d", fe.have, n))
	}
	return nil
}

// restart empties the file and the hashes and forgets the old validators.
func (fe *fetch) restart() error {
	fe.pipe.reset()
	if err := fe.f.Truncate(0); err != nil {
		return fe.permanent("truncate", 0, err)
	}
	fe.have, fe.total, fe.reserved = 0, 0, 0
	fe.meta = sidecar{}
	fe.resumed, fe.fromDisk = false, false
	return nil
}

// complete reports whether no request is needed: a partial left by an
// earlier Fetch already has the expected size and the digest check will vouch for it.
func (fe *fetch) complete() bool {
	return fe.fromDisk && fe.req.ExpectedSize > 0 && fe.have == fe.req.ExpectedSize && !fe.req.Expected.IsZero()
}

func (fe *fetch) sha256Digest() digest.Digest { return digest.FromHash(digest.SHA256, fe.sha256) }

func (fe *fetch) result() Result {
	return Result{Path: fe.req.Dest, Resumed: fe.resumed, Transferred: fe.transferred, Attempts: fe.attempts}
}

// report calls the progress callback if it is due (or final); done counts
// bytes received, some of which may still be on their way to the file.
func (fe *fetch) report(done, received int64, final bool) {
	if fe.req.Progress == nil {
		return
	}
	now := time.Now()
	if !final && now.Sub(fe.lastReport) < progressInterval {
		return
	}
	fe.lastReport = now
	p := Progress{Done: done, Total: fe.total}
	if final {
		p.Total = fe.have
	}
	if el := now.Sub(fe.start).Seconds(); el > 0 {
		p.BytesPerSecond = float64(fe.transferred+received) / el
	}
	fe.req.Progress(p)
}

// finalError removes the partial when its content is known to be wrong.
func (fe *fetch) finalError(err error) error {
	if errors.Is(err, ErrDigestMismatch) || errors.Is(err, ErrSizeMismatch) || errors.Is(err, ErrTooLarge) {
		_ = fe.f.Truncate(0)
		_ = os.Remove(fe.req.Dest)
		_ = RemoveSidecar(fe.req.Dest)
	}
	return err
}

func (fe *fetch) permanent(op string, status int, err error) *Error {
	return &Error{Name: fe.req.Name, URL: fe.req.URL, Op: op, StatusCode: status, Err: err}
}

func (fe *fetch) retryable(op string, status int, err error) *Error {
	return &Error{Name: fe.req.Name, URL: fe.req.URL, Op: op, StatusCode: status, Retryable: true, Err: err}
}
