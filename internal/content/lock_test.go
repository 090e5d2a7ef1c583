package content

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vmprep/vmprep/internal/testutil"
)

func TestLockInProcess(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	unlock, err := s.Lock(ctx, "sha256:abc")
	if err != nil {
		t.Fatal(err)
	}

	// A waiter with a deadline gives up with the context's error.
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	if _, err := s.Lock(short, "sha256:abc"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock while held = %v, want DeadlineExceeded", err)
	}
	// A different name is independent.
	u2, err := s.Lock(ctx, "sha256:def")
	if err != nil {
		t.Fatalf("other name: %v", err)
	}
	u2()

	// A second Store on the same root (another worker in this process)
	// contends through the file lock.
	s2, err := Open(s.Root())
	if err != nil {
		t.Fatal(err)
	}
	short2, cancel2 := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel2()
	if _, err := s2.Lock(short2, "sha256:abc"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("second Store Lock while held = %v, want DeadlineExceeded", err)
	}

	// Waiters get the lock one at a time after release; the order of
	// events, not timing, is checked.
	var mu sync.Mutex
	var events []string
	record := func(e string) { mu.Lock(); events = append(events, e); mu.Unlock() }
	var wg sync.WaitGroup
	for _, st := range []*Store{s, s2, s} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u, err := st.Lock(ctx, "sha256:abc")
			if err != nil {
				t.Error(err)
				return
			}
			record("in")
			record("out")
			u()
		}()
	}
	record("released")
	if err := unlock(); err != nil {
		t.Fatal(err)
	}
	if err := unlock(); err != nil { // idempotent
		t.Fatal(err)
	}
	wg.Wait()
	got := strings.Join(events, ",")
	if got != "released,in,out,in,out,in,out" {
		t.Errorf("events %s: waiters overlapped or ran before release", got)
	}
}

func TestLockAcrossProcesses(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	release := holdLockInChild(t, s.Root(), "sha512:feed")
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if _, err := s.Lock(short, "sha512:feed"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Lock held by another process = %v, want DeadlineExceeded", err)
	}
	done := make(chan error, 1)
	go func() {
		u, err := s.Lock(ctx, "sha512:feed")
		if err == nil {
			err = u()
		}
		done <- err
	}()
	if err := release(); err != nil {
		t.Fatalf("child: %v", err)
	}
	if err := <-done; err != nil {
		t.Fatalf("Lock after the other process released: %v", err)
	}
}

func TestLockNames(t *testing.T) {
	s := newStore(t)
	for _, name := range []string{"", ".", "..", "../x", "a/b", `a\b`, "a\x00b", ".hidden", strings.Repeat("a", 201), "a b"} {
		if _, err := s.Lock(context.Background(), name); !errors.Is(err, ErrInvalidName) {
			t.Errorf("Lock(%q) = %v, want ErrInvalidName", name, err)
		}
	}
	for _, name := range []string{"sha256:" + strings.Repeat("a", 64), "image-ubuntu_24.04"} {
		u, err := s.Lock(context.Background(), name)
		if err != nil {
			t.Errorf("Lock(%q) = %v", name, err)
			continue
		}
		u()
	}
}

// TestLockSurvivesLockFileRemoval: GC deletes lock files nobody holds, while
// other workers wait on (or are about to open) the same file. Mutual
// exclusion must hold throughout: a waiter that locked a deleted file must
// notice and lock the new one. Workers use separate Store values, so they
// contend through flock exactly as separate processes do.
func TestLockSurvivesLockFileRemoval(t *testing.T) {
	root := newStore(t).Root()
	open := func() *Store {
		s, err := Open(root, WithLockPoll(time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	ctx := context.Background()
	const name = "sha256:contended"
	stop := make(chan struct{})
	gcDone := make(chan struct{})
	go func() { // GC's orphan sweep, as fast as it can go
		defer close(gcDone)
		gc := open()
		for {
			select {
			case <-stop:
				return
			default:
			}
			g := &gcRun{s: gc, ctx: ctx, rep: &GCReport{}}
			if err := g.orphans(); err != nil {
				t.Error(err)
				return
			}
			// The same as orphans does, holding the lock a little longer
			// after the removal so that waiters pile up on the old file.
			if u, ok, err := gc.lock(ctx, lockUser, name, true); err == nil && ok {
				_ = os.Remove(gc.path(dirLocks, lockUser, name))
				time.Sleep(200 * time.Microsecond)
				_ = u()
			}
		}
	}()
	stores := []*Store{open(), open(), open(), open()}
	testutil.MutualExclusion(t, len(stores), 500, func(w, _ int) (func() error, error) {
		return stores[w].Lock(ctx, name)
	})
	close(stop)
	<-gcDone
}

// TestLockDigestSpellings: a digest's lock does not depend on the case of
// its hex (the pipeline passes digests as published; GC uses IngestPath's
// canonical form when it checks whether a partial download is in progress).
func TestLockDigestSpellings(t *testing.T) {
	s := newStore(t)
	ctx := context.Background()
	d := testutil.SHA256Of([]byte("spelled"))
	upper := "SHA256:" + strings.ToUpper(d.Hex)
	unlock, err := s.Lock(ctx, upper)
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	short, cancel := context.WithTimeout(ctx, 30*time.Millisecond)
	defer cancel()
	if _, err := s.Lock(short, d.String()); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("Lock(%s) while %s is held = %v, want it to wait", d, upper, err)
	}
	// GC must see the download in progress and keep its (stale) partial.
	p := s.IngestPath(d)
	if err := os.WriteFile(p, []byte("partial"), 0o644); err != nil {
		t.Fatal(err)
	}
	old := time.Now().Add(-48 * time.Hour)
	if err := os.Chtimes(p, old, old); err != nil {
		t.Fatal(err)
	}
	rep, err := s.GC(ctx, GCOptions{}, noRefs{})
	if err != nil {
		t.Fatal(err)
	}
	if !testutil.Exists(p) || len(rep.Busy) != 1 {
		t.Errorf("GC removed a partial whose download lock is held (busy %v)", rep.Busy)
	}
}
