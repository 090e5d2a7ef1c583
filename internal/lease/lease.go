// Package lease gives one holder at a time a renewable lease on a key in a
// JetStream KV bucket, fleet-wide: Create is the lock (it fails if the key
// exists), an Update with the last revision renews it, and the bucket's TTL
// (its MaxAge) makes a dead holder's lease lapse. A per-key TTL cannot be
// extended, hence the bucket-wide one.
//
// A holder that renews forever without progress (stuck, or a forged lease)
// would never lapse: a waiter watches the progress a lease records and,
// once it has not grown for the stall bound (WithStall), takes the lease
// over with a compare-and-set on the revision it saw, so the old holder's
// next renewal fails and it stops.
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
	stall  time.Duration
}

// Option configures Leases.
type Option func(*Leases)

// WithStall lets WaitOrTakeOver take over a lease whose recorded progress
// has not grown for d (0: never; a lapse by TTL only). d must be well above
// the TTL: an honest holder records progress at least every TTL/4 while
// bytes flow, and lets its lease lapse after a TTL without them.
func WithStall(d time.Duration) Option { return func(l *Leases) { l.stall = d } }

// New returns leases in kv (whose TTL must be ttl) taken in holder's name.
func New(kv jetstream.KeyValue, holder string, ttl time.Duration, opts ...Option) *Leases {
	l := &Leases{kv: kv, holder: holder, ttl: ttl}
	for _, o := range opts {
		o(l)
	}
	return l
}

// Stall is how long a lease may go without progress before a waiter takes
// it over (0: never).
func (l *Leases) Stall() time.Duration { return l.stall }

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
// hands, when ready() reports true, or when ctx ends. It looks every poll
// rather than watching: a watch is a consumer, and a user that may create
// consumers of the leases may make the server deliver a lease value (which
// it writes) onto any subject; a lapse by TTL is silent to watchers anyway.
func (l *Leases) Wait(ctx context.Context, key string, poll time.Duration, ready func() bool) error {
	_, err := l.wait(ctx, key, poll, ready, false)
	return err
}

// WaitOrTakeOver is Wait, except that a lease whose recorded progress
// (Record.Done) has not grown for the stall bound is taken over: it then
// returns the lease, now ours. It returns a nil lease when the lease came
// free or ready() reported true. The bound counts from when this waiter
// first saw the lease, so a takeover comes at most stall (plus a poll)
// after a waiter starts watching a lease that makes no progress.
func (l *Leases) WaitOrTakeOver(ctx context.Context, key string, poll time.Duration, ready func() bool) (*Lease, error) {
	return l.wait(ctx, key, poll, ready, l.stall > 0)
}

func (l *Leases) wait(ctx context.Context, key string, poll time.Duration, ready func() bool, takeover bool) (*Lease, error) {
	t := time.NewTicker(poll)
	defer t.Stop()
	// The most progress seen, and when it last grew (by this waiter's clock:
	// the holder's own timestamps are its word).
	best, grew := int64(-1), time.Now()
	var holder Record
	look := func(e jetstream.KeyValueEntry) (*Lease, error) {
		var rec Record
		if json.Unmarshal(e.Value(), &rec) != nil {
			rec.Done = -1 // unreadable: no progress
		}
		if rec.Holder != holder.Holder || !rec.Since.Equal(holder.Since) {
			// A new holder (the old one's lease lapsed between two looks)
			// gets the whole bound afresh.
			holder, best, grew = rec, rec.Done, time.Now()
			return nil, nil
		}
		if rec.Done > best {
			best, grew = rec.Done, time.Now()
			return nil, nil
		}
		if !takeover || time.Since(grew) < l.stall {
			return nil, nil
		}
		return l.takeOver(ctx, key, e.Revision(), rec)
	}
	for {
		if ready() {
			return nil, nil
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-t.C:
			e, err := l.kv.Get(ctx, key)
			if errors.Is(err, jetstream.ErrKeyNotFound) {
				return nil, nil
			}
			if err == nil {
				if held := failed(key, e.Value()); held != nil {
					return nil, held
				}
				if ls, err := look(e); ls != nil || err != nil {
					return ls, err
				}
			}
		}
	}
}

// takeOver replaces the lease at revision rev (a holder without progress)
// with ours. If the holder renewed meanwhile the compare-and-set fails and
// nil is returned: the waiter looks again at the next poll.
func (l *Leases) takeOver(ctx context.Context, key string, rev uint64, old Record) (*Lease, error) {
	now := time.Now().UTC()
	rec := Record{Holder: l.holder, Since: now, Renewed: now}
	data, err := json.Marshal(rec)
	if err != nil {
		return nil, err
	}
	nrev, err := l.kv.Update(ctx, key, data, rev)
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("lease %s: take over from %s: %w", key, old.Holder, err)
	}
	return &Lease{leases: l, key: key, rec: rec, rev: nrev}, nil
}

// failed is the *HeldError of a lease value that records a failure, or nil.
func failed(key string, value []byte) *HeldError {
	var rec Record
	if json.Unmarshal(value, &rec) != nil || rec.Failed == "" {
		return nil
	}
	return &HeldError{Key: key, Record: rec}
}
