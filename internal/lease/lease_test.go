package lease_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/lease"
	"github.com/vmprep/vmprep/internal/testutil"
)

func bucket(t *testing.T, ttl time.Duration) jetstream.KeyValue {
	t.Helper()
	_, _, js := testutil.EmbeddedJetStream(t, nats.Name("lease-test"))
	kv, err := js.CreateKeyValue(context.Background(), jetstream.KeyValueConfig{Bucket: "L", TTL: ttl, History: 1})
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

func TestOneHolderAtATime(t *testing.T) {
	ctx := context.Background()
	kv := bucket(t, time.Minute)
	a, b := lease.New(kv, "a", time.Minute), lease.New(kv, "b", time.Minute)
	la, err := a.TryAcquire(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	_, err = b.TryAcquire(ctx, "k")
	var held *lease.HeldError
	if !errors.As(err, &held) || held.Record.Holder != "a" || !errors.Is(err, lease.ErrHeld) {
		t.Fatalf("second acquire: %v", err)
	}
	if err := la.Renew(ctx, 10); err != nil {
		t.Fatal(err)
	}
	if err := la.Release(ctx); err != nil {
		t.Fatal(err)
	}
	lb, err := b.TryAcquire(ctx, "k")
	if err != nil {
		t.Fatalf("acquire after release: %v", err)
	}
	// a's stale handle can neither renew nor release b's lease.
	if err := la.Renew(ctx, 20); !errors.Is(err, lease.ErrLost) {
		t.Fatalf("renew of a released lease: %v", err)
	}
	if err := la.Release(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := a.TryAcquire(ctx, "k"); !errors.Is(err, lease.ErrHeld) {
		t.Fatalf("b's lease disappeared: %v", err)
	}
	_ = lb.Release(ctx)
}

// A holder that stops renewing (it died) loses the lease after the TTL, and
// its handle then knows it lost it.
func TestLapseAndTakeover(t *testing.T) {
	ctx := context.Background()
	const ttl = time.Second
	kv := bucket(t, ttl)
	a, b := lease.New(kv, "a", ttl), lease.New(kv, "b", ttl)
	la, err := a.TryAcquire(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	woke := make(chan error, 1)
	go func() { woke <- b.Wait(ctx, "k", 100*time.Millisecond, func() bool { return false }) }()
	select {
	case err := <-woke:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the waiter never saw the lapse")
	}
	if time.Since(start) < ttl/2 {
		t.Fatalf("the lease lapsed after %s, TTL %s", time.Since(start), ttl)
	}
	if _, err := b.TryAcquire(ctx, "k"); err != nil {
		t.Fatalf("takeover: %v", err)
	}
	if err := la.Renew(ctx, 1); !errors.Is(err, lease.ErrLost) {
		t.Fatalf("the old holder renewed over the new one: %v", err)
	}
}

// Keep renews while progress moves, so the lease outlives its TTL; a waiter
// sees the release at its next poll (it polls: a watch is a consumer, which
// a fetcher may not create).
func TestKeepWhileBytesFlow(t *testing.T) {
	ctx := context.Background()
	const ttl = time.Second
	kv := bucket(t, ttl)
	a, b := lease.New(kv, "a", ttl), lease.New(kv, "b", ttl)
	la, err := a.TryAcquire(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	var done atomic.Int64
	stopTicking := make(chan struct{})
	go func() {
		for {
			select {
			case <-stopTicking:
				return
			case <-time.After(50 * time.Millisecond):
				done.Add(1)
			}
		}
	}()
	defer close(stopTicking)
	stop := la.Keep(ctx, done.Load, 0, func(err error) { t.Errorf("lost: %v", err) })
	time.Sleep(3 * ttl)
	if _, err := b.TryAcquire(ctx, "k"); !errors.Is(err, lease.ErrHeld) {
		t.Fatalf("a kept lease was taken: %v", err)
	}
	woke := make(chan error, 1)
	go func() { woke <- b.Wait(ctx, "k", 200*time.Millisecond, func() bool { return false }) }()
	time.Sleep(100 * time.Millisecond)
	stop()
	if err := la.Release(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-woke:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiter did not see the release")
	}
}

// TestStalledHolderIsTakenOver: a holder that renews its lease forever
// without its progress growing (stuck, or a forged lease) is taken over
// after the stall bound, and its next renewal fails; a holder whose
// progress grows keeps its lease.
func TestStalledHolderIsTakenOver(t *testing.T) {
	ctx := context.Background()
	ttl, stall := 2*time.Second, time.Second
	kv := bucket(t, ttl)
	forger, waiter := lease.New(kv, "forger", ttl), lease.New(kv, "waiter", ttl, lease.WithStall(stall))

	// A growing holder first: it is never taken over.
	lg, err := forger.TryAcquire(ctx, "growing")
	if err != nil {
		t.Fatal(err)
	}
	gctx, gstop := context.WithCancel(ctx)
	go func() {
		for done := int64(1); gctx.Err() == nil; done++ {
			_ = lg.Renew(gctx, done)
			time.Sleep(100 * time.Millisecond)
		}
	}()
	wctx, wcancel := context.WithTimeout(ctx, 4*stall)
	got, err := waiter.WaitOrTakeOver(wctx, "growing", 100*time.Millisecond, func() bool { return false })
	wcancel()
	gstop()
	if got != nil || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("a holder with growing progress was taken over (lease %v, err %v)", got != nil, err)
	}

	lf, err := forger.TryAcquire(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	fctx, fstop := context.WithCancel(ctx)
	defer fstop()
	renewErr := make(chan error, 1)
	go func() {
		for fctx.Err() == nil {
			if err := lf.Renew(fctx, 42); err != nil {
				renewErr <- err
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	wctx, wcancel = context.WithTimeout(ctx, time.Minute)
	defer wcancel()
	start := time.Now()
	got, err = waiter.WaitOrTakeOver(wctx, "k", 100*time.Millisecond, func() bool { return false })
	if err != nil || got == nil {
		t.Fatalf("a lease renewed without progress was not taken over: %v", err)
	}
	if waited := time.Since(start); waited < stall {
		t.Errorf("taken over after %s, before the stall bound %s", waited, stall)
	}
	select {
	case err := <-renewErr:
		if !errors.Is(err, lease.ErrLost) {
			t.Errorf("the stalled holder's renewal failed with %v, want ErrLost", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("the stalled holder kept renewing after the takeover")
	}
	if err := got.Renew(ctx, 1); err != nil {
		t.Errorf("the new holder cannot renew: %v", err)
	}
}
