// Package lease gives one holder at a time a renewable lease on a key in a
// JetStream KV bucket, fleet-wide: Create is the lock (it fails if the key
// exists), an Update with the last revision renews it, and the bucket's TTL
// (its MaxAge) makes a dead holder's lease lapse. A per-key TTL cannot be
// extended, hence the bucket-wide one.
package lease

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Sentinel errors; test with errors.Is.
var (
	// ErrHeld: someone else holds the lease (see *HeldError).
	ErrHeld = errors.New("lease held")
	// ErrLost: the lease lapsed or was taken over while we thought we held it.
	ErrLost = errors.New("lease lost")
)

// Record is what a lease's value says about its holder.
type Record struct {
	Holder  string    `json:"holder"`
	Since   time.Time `json:"since"`
	Renewed time.Time `json:"renewed"`
	// Done is the holder's progress (bytes), for operators.
	Done int64 `json:"done,omitempty"`
	// Failed, when set, says the holder's work failed for good (the origin
	// stopped answering): the key stays taken until the bucket's TTL, so
	// that those waiting, and those coming within the TTL, are answered
	// with the failure instead of trying again one after the other.
	Failed string `json:"failed,omitempty"`
}

// HeldError says who holds a lease.
type HeldError struct {
	Key    string
	Record Record
}

func (e *HeldError) Error() string {
	if e.Record.Failed != "" {
		return fmt.Sprintf("lease %s: %s failed at %s: %s", e.Key, e.Record.Holder, e.Record.Renewed.Format(time.RFC3339), e.Record.Failed)
	}
	return fmt.Sprintf("lease %s held by %s since %s", e.Key, e.Record.Holder, e.Record.Since.Format(time.RFC3339))
}

// Is makes errors.Is(err, ErrHeld) true.
func (e *HeldError) Is(target error) bool { return target == ErrHeld }

// Leases hands out leases in one bucket.
type Leases struct {
	kv     jetstream.KeyValue
	holder string
	ttl    time.Duration
}

// New returns leases in kv (whose TTL must be ttl) taken in holder's name.
func New(kv jetstream.KeyValue, holder string, ttl time.Duration) *Leases {
	return &Leases{kv: kv, holder: holder, ttl: ttl}
}

// TTL is how long a lease lasts without renewal.
func (l *Leases) TTL() time.Duration { return l.ttl }

// Lease is a held lease.
type Lease struct {
	leases *Leases
	key    string
	mu     sync.Mutex
	rec    Record
	rev    uint64
	lost   bool
}

// TryAcquire takes the lease on key, or returns a *HeldError.
func (l *Leases) TryAcquire(ctx context.Context, key string) (*Lease, error) {
	now := time.Now().UTC()
	rec := Record{Holder: l.holder, Since: now, Renewed: now}
	data, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	rev, err := l.kv.Create(ctx, key, data)
	if errors.Is(err, jetstream.ErrKeyExists) {
		held := &HeldError{Key: key}
		if e, gerr := l.kv.Get(ctx, key); gerr == nil {
			_ = json.Unmarshal(e.Value(), &held.Record)
		}
		return nil, held
	}
	if err != nil {
		return nil, fmt.Errorf("lease %s: %w", key, err)
	}
	return &Lease{leases: l, key: key, rec: rec, rev: rev}, nil
}

// Renew extends the lease by the TTL, recording done. It fails with ErrLost
// if the lease lapsed or someone else holds it now.
func (ls *Lease) Renew(ctx context.Context, done int64) error {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.lost {
		return fmt.Errorf("lease %s: %w", ls.key, ErrLost)
	}
	rec := ls.rec
	rec.Renewed, rec.Done = time.Now().UTC(), done
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	rev, err := ls.leases.kv.Update(ctx, ls.key, data, ls.rev)
	if err != nil {
		if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound) {
			ls.lost = true
			return fmt.Errorf("lease %s: %w", ls.key, ErrLost)
		}
		return fmt.Errorf("lease %s: renew: %w", ls.key, err)
	}
	ls.rec, ls.rev = rec, rev
	return nil
}

// Release gives the lease up (only if it is still ours).
func (ls *Lease) Release(ctx context.Context) error {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.lost {
		return nil
	}
	ls.lost = true
	err := ls.leases.kv.Delete(ctx, ls.key, jetstream.LastRevision(ls.rev))
	if err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		var apiErr *jetstream.APIError
		if errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence {
			return nil // lapsed and taken over: not ours to delete
		}
		return fmt.Errorf("lease %s: release: %w", ls.key, err)
	}
	return nil
}

// Fail ends the lease with a failure that those waiting (Wait) and those
// trying to take it (TryAcquire: a *HeldError whose Record.Failed is set)
// see until the bucket's TTL removes it.
func (ls *Lease) Fail(ctx context.Context, cause string) error {
	ls.mu.Lock()
	defer ls.mu.Unlock()
	if ls.lost {
		return nil
	}
	ls.lost = true
	rec := ls.rec
	rec.Renewed, rec.Failed = time.Now().UTC(), cause
	data, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if _, err := ls.leases.kv.Update(ctx, ls.key, data, ls.rev); err != nil {
		return fmt.Errorf("lease %s: record failure: %w", ls.key, err)
	}
	return nil
}

// Keep renews the lease every TTL/4 while progress reports new bytes, until
// ctx ends. If progress stops for stuck (at least a TTL) the lease is left to
// lapse, so that a stuck holder hands over; a holder that bounds its own
// wait for bytes passes that bound, so that nobody takes over (and starts
// the wait again) while it still tries. onLost is called once if the lease
// is lost; the returned func stops keeping it.
func (ls *Lease) Keep(ctx context.Context, progress func() int64, stuck time.Duration, onLost func(error)) (stop func()) {
	stuck = max(stuck, ls.leases.ttl)
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(ls.leases.ttl / 4)
		defer t.Stop()
		last, lastMove := progress(), time.Now()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			cur := progress()
			if cur != last {
				last, lastMove = cur, time.Now()
			}
			if time.Since(lastMove) > stuck {
				continue // no bytes: let it lapse
			}
			rctx, rcancel := context.WithTimeout(ctx, ls.leases.ttl/4)
			err := ls.Renew(rctx, cur)
			rcancel()
			if errors.Is(err, ErrLost) {
				if onLost != nil {
					onLost(err)
				}
				return
			}
		}
	}()
	return func() { cancel(); <-done }
}

// Wait returns when the lease on key is free (deleted or lapsed) or changed
// hands, when ready() reports true, or when ctx ends. It watches the key and
// also looks every poll, since a lapse by TTL is silent to watchers. A
// holder's failure (Fail) returns a *HeldError whose Record.Failed says it.
func (l *Leases) Wait(ctx context.Context, key string, poll time.Duration, ready func() bool) error {
	w, err := l.kv.Watch(ctx, key, jetstream.UpdatesOnly())
	var updates <-chan jetstream.KeyValueEntry
	if err == nil {
		defer func() { _ = w.Stop() }()
		updates = w.Updates()
	}
	t := time.NewTicker(poll)
	defer t.Stop()
	for {
		if ready() {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case e, ok := <-updates:
			if !ok {
				updates = nil
				continue
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				return nil // deleted or purged: free
			}
			if held := failed(key, e.Value()); held != nil {
				return held
			}
		case <-t.C:
			e, err := l.kv.Get(ctx, key)
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				return nil
			}
			if err == nil {
				if held := failed(key, e.Value()); held != nil {
					return held
				}
			}
		}
	}
}

// failed is the *HeldError of a lease value that records a failure, or nil.
func failed(key string, value []byte) *HeldError {
	var rec Record
	if json.Unmarshal(value, &rec) != nil || rec.Failed == "" {
		return nil
	}
	return &HeldError{Key: key, Record: rec}
}
