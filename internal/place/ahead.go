package place

import (
	"context"
	"errors"
	"fmt"
	"os"

	"github.com/vmprep/vmprep/internal/content"
	"github.com/vmprep/vmprep/internal/follow"
	"github.com/vmprep/vmprep/internal/qcow2"
	"github.com/vmprep/vmprep/pkg/digest"
	"github.com/vmprep/vmprep/pkg/image"
)

// testHookAwaitingVerdict, if set (tests only), runs when a conversion
// ahead is complete and waits for the follow's verdict.
var testHookAwaitingVerdict func()

// errNoWord: the download engine of this process stopped writing the
// followed file without a record that vouches for it as it is.
var errNoWord = errors.New("the download in this process ended without vouching for this file")

// errCommitted: the blob was committed before its ingest file could be
// followed; it converts from the blob instead.
var errCommitted = errors.New("the blob was committed before its download could be followed")

// RawDiskAhead is RawDisk for a qcow2 disk still being downloaded into
// this store's ingest file for want (size bytes, as signed): it converts
// while the bytes arrive, hashing them itself, and publishes the raw disk,
// under the same key as RawDisk, only once the bytes it read and converted
// hash to want. The qcow2 header's offsets are checked against size, as for
// a complete file; reads wait until their bytes are in. On a mismatch, a
// restarted or stalled download or any other failure nothing is published
// and the temporary output is removed; the conversion of the committed blob
// (RawDisk) then starts from nothing.
//
// While it runs it holds the derived artifact's lock, so a RawDisk of the
// same disk waits for it and then finds the result instead of converting a
// second time. If the blob is committed before its ingest file is seen,
// it converts the blob.
func (p *Placer) RawDiskAhead(ctx context.Context, want digest.Digest, size int64, opts follow.Options) (string, error) {
	if size <= 0 {
		return "", fmt.Errorf("convert %s ahead: the expected size is needed (got %d)", want, size)
	}
	key := DerivedKeyOf(image.RoleDisk, want)
	if path, err := p.Store.Derived(ctx, key); !errors.Is(err, content.ErrNotFound) {
		return path, err
	}
	if blob, err := p.Store.Lookup(ctx, want); err == nil {
		return p.RawDisk(ctx, blob)
	}
	opts.Gone = func() error {
		if _, err := p.Store.Lookup(ctx, want); err == nil {
			return errCommitted
		}
		return nil
	}
	ingest := p.Store.IngestPath(want)
	if p.Store.HashedHere(ingest) {
		// The download engine in this process hashes the file as it
		// writes it: take its word (never another process's) instead of
		// hashing the file a second time.
		opts.Vouch = func(fi os.FileInfo) (bool, error) {
			// Writing first: the engine records before it stops writing,
			// so a writer gone by now left its record to be found below.
			writing := p.Store.HashingNow(ingest)
			if _, ok := p.Store.Hashed(ingest, fi, want); ok {
				return true, nil
			}
			if !writing {
				// Its record is of another file, or it failed: do not
				// hold the derived file's lock for the idle timeout.
				return false, errNoWord
			}
			return false, nil
		}
	}
	fl, err := follow.Start(ctx, ingest, want, size, opts)
	if err != nil {
		return "", err
	}
	defer fl.Close()
	// Wait for the download to begin before taking the derived file's lock:
	// a RawDisk of this disk must not wait behind a download that has not
	// started (it may never: the blob was committed meanwhile).
	select {
	case <-fl.Opened():
	case <-fl.Done():
	case <-ctx.Done():
		return "", fmt.Errorf("convert %s ahead: %w", want, context.Cause(ctx))
	}
	path, err := p.Store.PutDerivedSealed(ctx, key, func(ctx context.Context, dst string) (string, error) {
		if isDone(fl.Done()) {
			if err := fl.Wait(ctx); err != nil {
				return "", err
			}
		}
		digest, opt := outputDigest()
		_, err := qcow2.ConvertReaderToRaw(ctx, fl.ReaderAt(ctx), size, ingest, dst,
			qcow2.WithSourceFormat(qcow2.FormatQcow2),
			qcow2.WithConcurrency(p.Concurrency),
			qcow2.WithBeforePublish(func(ctx context.Context) error {
				if testHookAwaitingVerdict != nil {
					testHookAwaitingVerdict()
				}
				return fl.Wait(ctx)
			}), opt)
		if err != nil && isDone(fl.Done()) {
			// The follow's verdict is the cause; the conversion's error
			// (a read of bytes that never came, which it would call a
			// malformed image) is its consequence.
			if ferr := fl.Wait(ctx); ferr != nil {
				err = ferr
			}
		}
		if err != nil {
			return "", err
		}
		return digest()
	})
	if errors.Is(err, errCommitted) {
		blob, lerr := p.Store.Lookup(ctx, want)
		if lerr != nil {
			return "", fmt.Errorf("convert %s ahead: %w", want, lerr)
		}
		return p.RawDisk(ctx, blob)
	}
	return path, err
}

func isDone(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}
