// Package follow reads a file while another process is still writing it
// from start to end, as the download engine writes a content store's ingest
// file, hashing the bytes as they arrive. It tells when the bytes [0, N) it
// has read are the expected blob, and gives the rest of the program an
// io.ReaderAt whose reads wait until the bytes they ask for have arrived.
//
// What is verified is what this package read: the digest is of the bytes
// it hashed, in order, once each. A reader of the same file sees those bytes
// as long as the writer never rewrites a region it wrote before. The
// download engine rewrites only after shrinking the file (a restart from 0
// when the origin's validator changed, or back to its last durable offset
// after a failed attempt); a shrink seen here ends the follow with
// ErrTruncated, so that nothing read before it is trusted. The one window
// left open: a shrink followed by regrowth past the read position between
// two polls (the writer would have to rewrite more than the follower is
// behind within one poll interval).
//
// When the writer is in this process and hashes what it writes (the
// download engine), Options.Vouch lets the follow take its word instead of
// hashing the file a second time.
package follow

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"sync"
	"time"

	"github.com/vmprep/vmprep/pkg/digest"
)

var (
	// ErrTruncated: the file shrank below what was already read; the
	// writer restarted, and what was read may not be what it writes now.
	ErrTruncated = errors.New("file shrank while followed: the writer restarted")
	// ErrStalled: the file did not grow for the idle timeout.
	ErrStalled = errors.New("file stopped growing")
	// ErrDigestMismatch: the file reached its expected size, or grew past
	// it, and its bytes are not the expected blob.
	ErrDigestMismatch = errors.New("digest mismatch")
)

// Options tunes a follow; the zero value is usable.
type Options struct {
	// Idle is how long the file may go without growing (or, at the start,
	// without existing) before the follow ends with ErrStalled. Default 2 min.
	Idle time.Duration
	// PollMin and PollMax bound the wait between two looks at a file that
	// has not grown: it starts at PollMin after growth and doubles up to
	// PollMax. Defaults 2 ms and 100 ms.
	PollMin, PollMax time.Duration
	// ReadBytes is the size of each sequential read. Default 1 MiB.
	ReadBytes int
	// Vouch, if set, replaces hashing: the follow reads nothing, takes the
	// file's size for what has arrived, and once the file is as long as
	// expected asks Vouch at each look whether the file as it is now (fi,
	// from the descriptor the follow reads) is the expected blob; an error
	// from it ends the follow (say, the writer finished without vouching
	// for this file). Only for a writer in this process that hashes what it
	// writes and says so (content.Store.Hashed): never on another
	// process's word. Needs the expected size.
	Vouch func(fi os.FileInfo) (bool, error)
	// Gone, if set, is asked at each poll while the file does not exist; an
	// error from it ends the follow (say, the blob was committed meanwhile
	// and the file to follow will never appear under its ingest name).
	Gone func() error
}

func (o *Options) defaults() {
	if o.Idle <= 0 {
		o.Idle = 2 * time.Minute
	}
	if o.PollMin <= 0 {
		o.PollMin = 2 * time.Millisecond
	}
	if o.PollMax < o.PollMin {
		o.PollMax = max(100*time.Millisecond, o.PollMin)
	}
	if o.ReadBytes <= 0 {
		o.ReadBytes = 1 << 20
	}
}

// File follows one growing file. Its methods are safe for concurrent use.
type File struct {
	path     string
	expected digest.Digest
	size     int64 // expected size; 0 if unknown
	opts     Options
	cancel   context.CancelCauseFunc

	mu        sync.Mutex
	f         *os.File // nil until the file exists
	watermark int64    // bytes [0, watermark) are read and hashed
	advanced  chan struct{}
	opened    chan struct{} // closed once the file is open
	done      chan struct{} // closed when the follow ends
	err       error         // why it ended; nil: verified
	verified  bool

	polls int64 // looks at a file that had not grown, for measurement
}

// Start follows the file at path, expected to become the blob with digest
// expected and, if size > 0, that many bytes. It ends when the bytes read
// hash to expected (Wait returns nil), or with an error: the file shrank
// (ErrTruncated), reached size with other content (ErrDigestMismatch),
// stopped growing (ErrStalled), Fail was called, or ctx ended. Close
// releases it.
func Start(ctx context.Context, path string, expected digest.Digest, size int64, opts Options) (*File, error) {
	h, err := expected.Algorithm.New()
	if err != nil {
		return nil, fmt.Errorf("follow %s: %w", path, err)
	}
	if size < 0 {
		return nil, fmt.Errorf("follow %s: negative expected size %d", path, size)
	}
	if opts.Vouch != nil && size == 0 {
		return nil, fmt.Errorf("follow %s: a vouched follow needs the expected size", path)
	}
	opts.defaults()
	ctx, cancel := context.WithCancelCause(ctx)
	fl := &File{
		path: path, expected: expected, size: size, opts: opts, cancel: cancel,
		advanced: make(chan struct{}), opened: make(chan struct{}), done: make(chan struct{}),
	}
	go fl.run(ctx, h)
	return fl, nil
}

// Fail ends the follow with err (say, the download it follows failed).
// Readers waiting for bytes get err. It has no effect once the follow ended.
func (fl *File) Fail(err error) { fl.cancel(err) }

// Close ends the follow if it is still running and closes the file.
func (fl *File) Close() error {
	fl.cancel(errors.New("follow closed"))
	<-fl.done
	fl.mu.Lock()
	defer fl.mu.Unlock()
	if fl.f == nil {
		return nil
	}
	err := fl.f.Close()
	fl.f = nil
	return err
}

// Opened is closed once the file exists and is open: from then on the
// follow reads it whatever becomes of its name.
func (fl *File) Opened() <-chan struct{} { return fl.opened }

// Done is closed when the follow ends.
func (fl *File) Done() <-chan struct{} { return fl.done }

// Wait waits for the follow to end and returns nil if the bytes read are
// the expected blob, or why not.
func (fl *File) Wait(ctx context.Context) error {
	select {
	case <-fl.done:
	case <-ctx.Done():
		return fmt.Errorf("follow %s: %w", fl.path, context.Cause(ctx))
	}
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return fl.err
}

// Watermark is how many bytes from the start have been read and hashed
// (with Options.Vouch: have arrived).
func (fl *File) Watermark() int64 {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return fl.watermark
}

// Polls is how many times the follower looked at the file and found it had
// not grown: the cost of following, beyond reading.
func (fl *File) Polls() int64 {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	return fl.polls
}

func (fl *File) run(ctx context.Context, h hash.Hash) {
	err := fl.follow(ctx, h)
	fl.mu.Lock()
	if err != nil {
		fl.err = fmt.Errorf("follow %s: %w", fl.path, err)
	} else {
		fl.verified = true
	}
	close(fl.done)
	close(fl.advanced)
	fl.mu.Unlock()
}

// follow reads the file to its current end, hashing, then checks the digest
// and waits for more; it returns nil once the digest matches.
func (fl *File) follow(ctx context.Context, h hash.Hash) error {
	f, err := fl.open(ctx)
	if err != nil {
		return err
	}
	if fl.opts.Vouch != nil {
		return fl.followVouched(ctx, f)
	}
	buf := make([]byte, fl.opts.ReadBytes)
	var read int64 // bytes hashed; only this goroutine writes watermark
	sum := make([]byte, 0, h.Size())
	poll := fl.opts.PollMin
	lastGrowth := time.Now()
	for {
		n, err := f.Read(buf)
		if n > 0 {
			h.Write(buf[:n])
			read += int64(n)
			fl.advance(read)
			poll = fl.opts.PollMin
			lastGrowth = time.Now()
			if fl.size > 0 && read > fl.size {
				return fmt.Errorf("%w: %d bytes, more than the expected %d", ErrDigestMismatch, read, fl.size)
			}
			continue
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("read at %d: %w", read, err)
		}
		// At the end of what is there: is it the blob? Sum works on a copy
		// of the state, so hashing continues if not.
		if fl.size == 0 || read == fl.size {
			sum = h.Sum(sum[:0])
			if string(sum) == string(fl.expectedSum()) {
				return nil
			}
			if fl.size > 0 {
				return fmt.Errorf("%w: the %d bytes read hash to %s, want %s", ErrDigestMismatch, read, digest.FromHash(fl.expected.Algorithm, h), fl.expected)
			}
		}
		st, err := f.Stat()
		if err != nil {
			return fmt.Errorf("stat: %w", err)
		}
		if st.Size() < read {
			return fmt.Errorf("%w: %d bytes, after %d were read", ErrTruncated, st.Size(), read)
		}
		if st.Size() > read {
			continue // grew between the read and the stat
		}
		if time.Since(lastGrowth) >= fl.opts.Idle {
			return fmt.Errorf("%w: %d bytes, none added for %s", ErrStalled, read, fl.opts.Idle)
		}
		fl.mu.Lock()
		fl.polls++
		fl.mu.Unlock()
		if err := sleep(ctx, poll); err != nil {
			return err
		}
		poll = min(2*poll, fl.opts.PollMax)
	}
}

// followVouched is follow for a file whose writer, in this process, hashes
// it (Options.Vouch): it watches the size and waits for the writer's word.
func (fl *File) followVouched(ctx context.Context, f *os.File) error {
	var seen int64 // bytes in the file at the last look
	poll := fl.opts.PollMin
	lastGrowth := time.Now()
	for {
		st, err := f.Stat()
		if err != nil {
			return fmt.Errorf("stat: %w", err)
		}
		switch n := st.Size(); {
		case n < seen:
			return fmt.Errorf("%w: %d bytes, after %d were there", ErrTruncated, n, seen)
		case n > fl.size:
			return fmt.Errorf("%w: %d bytes, more than the expected %d", ErrDigestMismatch, n, fl.size)
		case n > seen:
			seen = n
			fl.advance(seen)
			poll, lastGrowth = fl.opts.PollMin, time.Now()
		}
		if seen == fl.size {
			if ok, err := fl.opts.Vouch(st); err != nil {
				return err
			} else if ok {
				return nil
			}
		}
		if time.Since(lastGrowth) >= fl.opts.Idle {
			return fmt.Errorf("%w: %d bytes, none added and no hasher's word for %s", ErrStalled, seen, fl.opts.Idle)
		}
		fl.mu.Lock()
		fl.polls++
		fl.mu.Unlock()
		if err := sleep(ctx, poll); err != nil {
			return err
		}
		poll = min(2*poll, fl.opts.PollMax)
	}
}

func (fl *File) expectedSum() []byte {
	b, _ := hex.DecodeString(fl.expected.Hex) // digest.New validated it
	return b
}

// open waits for the file to exist, within the idle timeout.
func (fl *File) open(ctx context.Context) (*os.File, error) {
	start := time.Now()
	poll := fl.opts.PollMin
	for {
		f, err := os.Open(fl.path)
		if err == nil {
			st, err := f.Stat()
			if err == nil && !st.Mode().IsRegular() {
				err = fmt.Errorf("a %s, not a regular file", st.Mode().Type())
			}
			if err != nil {
				_ = f.Close()
				return nil, err
			}
			fl.mu.Lock()
			fl.f = f
			fl.mu.Unlock()
			close(fl.opened)
			return f, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, err
		}
		if fl.opts.Gone != nil {
			if err := fl.opts.Gone(); err != nil {
				return nil, err
			}
		}
		if time.Since(start) >= fl.opts.Idle {
			return nil, fmt.Errorf("%w: the file did not appear within %s", ErrStalled, fl.opts.Idle)
		}
		if err := sleep(ctx, poll); err != nil {
			return nil, err
		}
		poll = min(2*poll, fl.opts.PollMax)
	}
}

func (fl *File) advance(to int64) {
	fl.mu.Lock()
	fl.watermark = to
	close(fl.advanced)
	fl.advanced = make(chan struct{})
	fl.mu.Unlock()
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return context.Cause(ctx)
	}
}

// ReaderAt returns a reader of the followed file whose ReadAt waits until
// the bytes it asks for have been read and hashed, or the follow ends; ctx
// bounds every wait. A read past the end of a verified file returns what
// is there and io.EOF, as os.File does; a read that waits on a follow that
// ends unverified returns the follow's error.
func (fl *File) ReaderAt(ctx context.Context) io.ReaderAt { return &readerAt{fl: fl, ctx: ctx} }

type readerAt struct {
	fl  *File
	ctx context.Context
}

func (r *readerAt) ReadAt(p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, fmt.Errorf("follow %s: read at negative offset %d", r.fl.path, off)
	}
	end := off + int64(len(p))
	if end < off {
		return 0, fmt.Errorf("follow %s: read of %d bytes at %d overflows", r.fl.path, len(p), off)
	}
	// A read that passes the expected size waits for the verdict: only a
	// verified file says where the bytes end.
	pastEnd := r.fl.size > 0 && end > r.fl.size
	for {
		r.fl.mu.Lock()
		wm, advanced, f := r.fl.watermark, r.fl.advanced, r.fl.f
		ended, verified, ferr := isClosed(r.fl.done), r.fl.verified, r.fl.err
		r.fl.mu.Unlock()
		switch {
		case ended && !verified:
			return 0, ferr
		case ended || (wm >= end && !pastEnd):
			// Verified, or the bytes asked for are in: the file holds them.
			if off >= wm {
				return 0, io.EOF
			}
			want := p[:min(int64(len(p)), wm-off)]
			n, err := f.ReadAt(want, off)
			if n < len(want) {
				// Bytes that were read once are gone: the file shrank.
				terr := fmt.Errorf("%w: %d bytes at %d were there and are not (%v)", ErrTruncated, len(want), off, err)
				r.fl.Fail(terr)
				return n, fmt.Errorf("follow %s: %w", r.fl.path, terr)
			}
			if n < len(p) {
				err = io.EOF
			}
			return n, err
		}
		select {
		case <-advanced:
		case <-r.ctx.Done():
			return 0, fmt.Errorf("follow %s: waiting for bytes [%d, %d) (have %d): %w", r.fl.path, off, end, wm, context.Cause(r.ctx))
		}
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
