package content

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"sync"

	"github.com/vmprep/vmprep/internal/filelock"
	"github.com/vmprep/vmprep/pkg/digest"
)

// Lock namespaces under locks/: user names cannot collide with the store's
// own locks, so a caller holding Lock(ctx, d.String()) may call Commit for d.
const (
	lockUser    = "user"
	lockBlob    = "blob"
	lockDerived = "derived"
	lockGCName  = "gc" // file locks/gc: shared by writers, exclusive for GC
)

// lockTable serialises goroutines of one Store before they contend for the
// flock, so that in-process waiters wake at once instead of polling.
type lockTable struct {
	mu sync.Mutex
	m  map[string]*lockSlot
}

type lockSlot struct {
	token chan struct{} // holds one value while the lock is taken
	refs  int
}

func (t *lockTable) slot(name string) *lockSlot {
	t.mu.Lock()
	defer t.mu.Unlock()
	sl := t.m[name]
	if sl == nil {
		sl = &lockSlot{token: make(chan struct{}, 1)}
		t.m[name] = sl
	}
	sl.refs++
	return sl
}

func (t *lockTable) drop(name string, sl *lockSlot) {
	t.mu.Lock()
	defer t.mu.Unlock()
	sl.refs--
	if sl.refs == 0 {
		delete(t.m, name)
	}
}

func (t *lockTable) acquire(ctx context.Context, name string, try bool) (release func(), ok bool, err error) {
	sl := t.slot(name)
	if try {
		select {
		case sl.token <- struct{}{}:
		default:
			t.drop(name, sl)
			return nil, false, nil
		}
	} else {
		select {
		case sl.token <- struct{}{}:
		case <-ctx.Done():
			t.drop(name, sl)
			return nil, false, ctx.Err()
		}
	}
	return func() { <-sl.token; t.drop(name, sl) }, true, nil
}

// fileLock takes a flock on path, polling up to s.lockPoll apart, and makes
// sure the lock is on the file at path now: GC may delete a lock file it
// holds, and a waiter that opened the old file must then lock the new one.
func (s *Store) fileLock(ctx context.Context, path string, shared, try bool) (unlock func() error, ok bool, err error) {
	opts := []filelock.Option{filelock.MaxPoll(s.lockPoll)}
	if shared {
		opts = append(opts, filelock.Shared())
	}
	var l *filelock.Lock
	if try {
		l, ok, err = filelock.TryAcquire(ctx, path, opts...)
	} else {
		l, err = filelock.Acquire(ctx, path, opts...)
		ok = err == nil
	}
	if err != nil || !ok {
		return nil, false, err
	}
	return l.Unlock, true, nil
}

// lock takes the named exclusive lock in namespace ns, in-process and across
// processes. With try it does not wait and reports ok=false if busy.
func (s *Store) lock(ctx context.Context, ns, name string, try bool) (unlock func() error, ok bool, err error) {
	key := ns + "/" + name
	release, ok, err := s.locks.acquire(ctx, key, try)
	if err != nil || !ok {
		return nil, false, err
	}
	funlock, ok, err := s.fileLock(ctx, s.path(dirLocks, ns, name), false, try)
	if err != nil || !ok {
		release()
		return nil, false, err
	}
	var once sync.Once
	return func() error {
		var uerr error
		once.Do(func() {
			uerr = funlock()
			release()
		})
		return uerr
	}, true, nil
}

// Lock takes an exclusive lock named name, waiting (until ctx is done) while
// another goroutine or process holds it. Use it for one writer per digest:
// the download engine locks expected.String() around fetching into
// IngestPath(expected) and committing; GC skips ingest files whose lock is
// held. Names are [A-Za-z0-9._+~@:-], not starting with '.'. The lock is
// not reentrant: taking it again before unlocking waits until ctx is done.
func (s *Store) Lock(ctx context.Context, name string) (unlock func() error, err error) {
	if err := validLockName(name); err != nil {
		return nil, fmt.Errorf("store: lock: %w", err)
	}
	// A digest is locked under its canonical spelling, so that "sha256:ABC…"
	// and "sha256:abc…" exclude each other and GC, which tries the lock of a
	// partial download by IngestPath's (canonical) digest, sees it held.
	if d, err := digest.Parse(name); err == nil {
		name = d.String()
	}
	unlock, _, err = s.lock(ctx, lockUser, name, false)
	if err != nil {
		return nil, fmt.Errorf("store: lock %q: %w", name, err)
	}
	return unlock, nil
}

// validLockName is like ValidComponent but also allows ':' (digest strings
// contain one) and up to 200 bytes.
func validLockName(name string) error {
	if name == "" || len(name) > 200 {
		return fmt.Errorf("%w: lock name %q must be 1 to 200 bytes", ErrInvalidName, name)
	}
	if name[0] == '.' {
		return fmt.Errorf("%w: lock name %q starts with '.'", ErrInvalidName, name)
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("._+~@:-", c) >= 0:
		default:
			return fmt.Errorf("%w: lock name %q contains %q", ErrInvalidName, name, c)
		}
	}
	return nil
}

// PublishLock is held shared by writers (Commit, PutDerived, and the layer
// above while it publishes a link or record) so that GC, which takes it
// exclusively, never runs while something is being published.
func (s *Store) PublishLock(ctx context.Context) (func() error, error) {
	unlock, _, err := s.fileLock(ctx, filepath.Join(s.root, dirLocks, lockGCName), true, false)
	return unlock, err
}

func (s *Store) gcExclusive(ctx context.Context) (func() error, error) {
	unlock, _, err := s.fileLock(ctx, filepath.Join(s.root, dirLocks, lockGCName), false, false)
	return unlock, err
}
