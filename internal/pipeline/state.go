package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/vmprep/vmprep/internal/stage"
	"github.com/vmprep/vmprep/pkg/catalog"
	"github.com/vmprep/vmprep/pkg/image"
	"github.com/vmprep/vmprep/pkg/messages"
)

// requestState is the join record of one request: what it asked for, what
// it was resolved to, which assets are done, and its result once decided.
type requestState struct {
	// Namespace is the requester's (messages.PrepareSubject).
	Namespace      string           `json:"namespace,omitempty"`
	Spec           image.Spec       `json:"spec"`
	Format         image.DiskFormat `json:"format"`
	Target         string           `json:"target,omitempty"`
	ClientConverts bool             `json:"client_converts,omitempty"`
	// Clones are the clones the request asked its target host for.
	Clones       []messages.CloneRequest `json:"clones,omitempty"`
	Roles        []image.Role            `json:"roles"`
	ResolvedFrom string                  `json:"resolved_from,omitempty"`
	// Resolution is what the request was resolved to, reused on redelivery.
	Resolution *catalog.Resolution                `json:"resolution,omitempty"`
	Done       map[image.Role]messages.AssetEvent `json:"done,omitempty"`
	// Final is the result once decided; it is republished on redelivery.
	Final *messages.Result `json:"final,omitempty"`
}

// sameRequest reports whether req asks for what st was created for.
func (st requestState) sameRequest(req messages.PrepareRequest) bool {
	return st.Spec == req.Spec && st.Format == req.Format && st.Target == req.Target && st.ClientConverts == req.ClientConverts &&
		slices.Equal(st.Clones, req.Clones)
}

// errStateNotFound: no state is recorded for the request id.
var errStateNotFound = errors.New("no request state")

// Requests is the request state bucket: one entry per request id, updated
// by compare-and-set so that concurrent workers agree. Only the resolver
// user writes it, each write marked so (stage.HeaderWriter), and it is read
// as the last entry so marked: anyone can make the server publish an
// answer onto a key's subject.
type Requests struct {
	kv jetstream.KeyValue
	nc *nats.Conn
}

// RequestsWriter is the role that writes request state (stage.HeaderWriter):
// the resolver and collector, one user.
const RequestsWriter = "resolver"

// NewRequests wraps the request state bucket, read through nc.
func NewRequests(nc *nats.Conn, kv jetstream.KeyValue) *Requests { return &Requests{kv: kv, nc: nc} }

// Load returns the state the resolver last wrote for request id, and the
// key's last revision (what Save expects; also with errStateNotFound), or
// errStateNotFound. Entries others made the server publish onto the key
// are stepped over (stage.GetOwned): the collector checks every report
// against the state. None of the resolver's left is stage.ErrTampered,
// never errStateNotFound: the request waits rather than start afresh.
func (r *Requests) Load(ctx context.Context, id string) (requestState, uint64, error) {
	var st requestState
	data, rev, err := stage.GetOwned(ctx, r.nc, messages.BucketRequests, id, RequestsWriter)
	if errors.Is(err, stage.ErrKeyNotFound) {
		return st, rev, fmt.Errorf("request %s: %w", id, errStateNotFound)
	}
	if err != nil {
		return st, 0, fmt.Errorf("request %s: %w", id, err)
	}
	if err := json.Unmarshal(data, &st); err != nil {
		return st, 0, fmt.Errorf("request %s: corrupt state: %w", id, err)
	}
	return st, rev, nil
}

// Create records the first state of request id; one that exists already is
// left alone (a concurrent duplicate got there first).
func (r *Requests) Create(ctx context.Context, id string, st requestState) error {
	for range 8 {
		_, rev, err := r.Load(ctx, id)
		if err == nil {
			return nil
		}
		if !errors.Is(err, errStateNotFound) {
			return fmt.Errorf("record state: %w", err)
		}
		err = r.Save(ctx, id, st, rev)
		if !errors.Is(err, errStateChanged) {
			return err
		}
	}
	return fmt.Errorf("request %s: record state: %w", id, errStateChanged)
}

// errStateChanged: the state changed since it was loaded; load and merge again.
var errStateChanged = errors.New("request state changed concurrently")

// Save writes st if the key's last revision is rev (Load's; 0: no entry
// at all). errStateChanged means another worker — or someone making the
// server publish onto the key — wrote first: load and merge again.
func (r *Requests) Save(ctx context.Context, id string, st requestState, rev uint64) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	_, err = stage.PutOwned(ctx, r.nc, messages.BucketRequests, id, RequestsWriter, b, &rev)
	if errors.Is(err, stage.ErrRevisionMismatch) {
		return errStateChanged
	}
	if err != nil {
		return fmt.Errorf("request %s: record state: %w", id, err)
	}
	return nil
}

// Failed reports whether request id has already ended in failure (say, its
// kernel was not found), so that its other assets need no more work. Any
// doubt (no bucket, no state, an error) means "not failed".
func (r *Requests) Failed(ctx context.Context, id string) bool {
	if r == nil || r.kv == nil {
		return false
	}
	st, _, err := r.Load(ctx, id)
	return err == nil && st.Final != nil && st.Final.Status == messages.ResultFailed
}
