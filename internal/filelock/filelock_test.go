package filelock

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/testutil"
)

func TestExclusiveAndShared(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "lock")
	tests := []struct {
		name        string
		first, then []Option
		wantSecond  bool
	}{
		{"exclusive excludes exclusive", nil, nil, false},
		{"exclusive excludes shared", nil, []Option{Shared()}, false},
		{"shared excludes exclusive", []Option{Shared()}, nil, false},
		{"shared admits shared", []Option{Shared()}, []Option{Shared()}, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			first, err := Acquire(ctx, path, tc.first...)
			if err != nil {
				t.Fatal(err)
			}
			second, ok, err := TryAcquire(ctx, path, tc.then...)
			if err != nil {
				t.Fatal(err)
			}
			if ok != tc.wantSecond {
				t.Errorf("second lock taken = %v, want %v", ok, tc.wantSecond)
			}
			if ok {
				_ = second.Unlock()
			}
			if err := first.Unlock(); err != nil {
				t.Fatal(err)
			}
			again, ok, err := TryAcquire(ctx, path, tc.then...)
			if err != nil || !ok {
				t.Fatalf("after unlock: TryAcquire = %v, %v", ok, err)
			}
			_ = again.Unlock()
		})
	}
}

func TestAcquireCreatesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "new.lock")
	l, err := Acquire(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Unlock()
	if fi, err := os.Stat(path); err != nil || !fi.Mode().IsRegular() {
		t.Fatalf("lock file: %v, %v", fi, err)
	}
}

func TestAcquireWaitsUntilContextEnds(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	held, err := Acquire(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if _, err := Acquire(ctx, path, MaxPoll(5*time.Millisecond)); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Acquire of a held lock = %v, want context.DeadlineExceeded", err)
	}
	cancelled, cancel2 := context.WithCancel(context.Background())
	cancel2()
	if _, _, err := TryAcquire(cancelled, path); !errors.Is(err, context.Canceled) {
		t.Fatalf("TryAcquire with a cancelled context = %v, want context.Canceled", err)
	}
}

func TestAcquireGetsReleasedLock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "lock")
	held, err := Acquire(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	got := make(chan error, 1)
	go func() {
		l, err := Acquire(context.Background(), path, MaxPoll(time.Millisecond))
		if err == nil {
			err = l.Unlock()
		}
		got <- err
	}()
	if err := held.Unlock(); err != nil {
		t.Fatal(err)
	}
	if err := <-got; err != nil {
		t.Fatal(err)
	}
}

func TestUnusablePath(t *testing.T) {
	dir := t.TempDir()
	notDir := filepath.Join(dir, "file")
	if err := os.WriteFile(notDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	_, err := Acquire(context.Background(), filepath.Join(notDir, "lock"))
	if err == nil {
		t.Fatal("Acquire under a regular file succeeded")
	}
}

// TestLockFileRemovedUnderWaiters removes the lock file while holding it, as
// the store's GC and a committing download do, with other goroutines
// waiting on (or about to open) that file. Mutual exclusion must hold: a
// waiter that locked the removed file must notice and lock the new one. Each
// goroutine has its own flock, so they contend as separate processes do.
func TestLockFileRemovedUnderWaiters(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "contended.lock")
	testutil.MutualExclusion(t, 4, 500, func(w, i int) (func() error, error) {
		l, err := Acquire(ctx, path, MaxPoll(time.Millisecond))
		if err != nil {
			return nil, err
		}
		return func() error {
			if (w+i)%2 == 0 {
				// Removed while locked: waiters that opened it are left
				// holding a file nobody else will lock.
				_ = os.Remove(path)
				runtime.Gosched()
			}
			return l.Unlock()
		}, nil
	})
}
