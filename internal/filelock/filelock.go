// Package filelock takes advisory locks (flock) on files that other
// processes may delete or replace, and makes sure the lock taken is on the
// file that is at the path now.
//
// The race it closes: a waiter opens path, another process removes or
// renames that file (the store's GC deleting a lock file it holds, the
// download engine's partial file being committed) and a new file appears at
// path; the waiter's flock then succeeds on the old inode, which nobody else
// will ever lock again, and two holders think they own path. After taking a
// lock, Acquire checks that the locked file and path are still the same
// inode, and otherwise tries again on the new file.
//
// The content store and the download engine both lock this way; this is the
// one implementation.
package filelock

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"time"

	"github.com/gofrs/flock"
)

// Lock is a held lock.
type Lock struct{ fl *flock.Flock }

// Unlock releases the lock and closes the file. The file stays at its path.
func (l *Lock) Unlock() error { return l.fl.Unlock() }

type config struct {
	shared  bool
	maxPoll time.Duration
}

// Option configures Acquire and TryAcquire.
type Option func(*config)

// Shared takes a shared lock instead of an exclusive one.
func Shared() Option { return func(c *config) { c.shared = true } }

// MaxPoll sets the longest interval between attempts while another process
// holds the lock (default 100ms; attempts start 2ms apart and the interval
// doubles). flock cannot be interrupted, so waiting is polling.
func MaxPoll(d time.Duration) Option {
	return func(c *config) {
		if d > 0 {
			c.maxPoll = d
		}
	}
}

// maxReplaced bounds how often the file may be replaced under a waiter
// before Acquire gives up: a path that never stats as the locked file must
// not spin forever.
const maxReplaced = 100

// Acquire locks the file at path, creating it (mode 0644) if need be, and
// waits while another process (or another Lock in this one) holds it, until
// ctx ends; it then returns ctx's error as it is.
func Acquire(ctx context.Context, path string, opts ...Option) (*Lock, error) {
	l, _, err := acquire(ctx, path, false, opts)
	return l, err
}

// TryAcquire is Acquire without the wait: ok is false if the lock is held.
func TryAcquire(ctx context.Context, path string, opts ...Option) (l *Lock, ok bool, err error) {
	return acquire(ctx, path, true, opts)
}

func acquire(ctx context.Context, path string, try bool, opts []Option) (*Lock, bool, error) {
	cfg := config{maxPoll: 100 * time.Millisecond}
	for _, o := range opts {
		o(&cfg)
	}
	wait := min(2*time.Millisecond, cfg.maxPoll)
	for replaced := 0; ; {
		if err := ctx.Err(); err != nil {
			return nil, false, err
		}
		fl := flock.New(path, flock.SetPermissions(0o644))
		var got bool
		var err error
		if cfg.shared {
			got, err = fl.TryRLock()
		} else {
			got, err = fl.TryLock()
		}
		if err != nil {
			return nil, false, fmt.Errorf("lock %s: %w", path, err)
		}
		if got {
			same, err := stillAt(fl, path)
			if err != nil {
				_ = fl.Unlock()
				return nil, false, fmt.Errorf("lock %s: %w", path, err)
			}
			if same {
				return &Lock{fl: fl}, true, nil
			}
			_ = fl.Unlock()
			if replaced++; replaced > maxReplaced {
				return nil, false, fmt.Errorf("lock %s: the file was replaced %d times while being locked", path, maxReplaced)
			}
			continue // lock the file that is there now
		}
		if try {
			return nil, false, nil
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, false, ctx.Err()
		case <-t.C:
		}
		wait = min(wait*2, cfg.maxPoll)
	}
}

// stillAt reports whether the file fl has locked is the one at path: false
// if path is gone or is another file now.
func stillAt(fl *flock.Flock, path string) (bool, error) {
	held, err := fl.Stat()
	if err != nil {
		return false, err
	}
	cur, err := os.Stat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return os.SameFile(held, cur), nil
}
