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
// by compare-and-set so that concurrent workers agree.
type Requests struct {
	kv jetstream.KeyValue
	nc *nats.Conn
}

// NewRequests wraps the request state bucket, read through nc.
func NewRequests(nc *nats.Conn, kv jetstream.KeyValue) *Requests { return &Requests{kv: kv, nc: nc} }

// Load returns the state of request id and its revision, or errStateNotFound.
// A state the server relayed onto the key for another user is refused
// (stage.ErrRelayed): the collector checks every report against it.
func (r *Requests) Load(ctx context.Context, id string) (requestState, uint64, error) {
	var st requestState
	data, rev, err := stage.GetOwned(ctx, r.nc, messages.BucketRequests, id)
	if errors.Is(err, stage.ErrKeyNotFound) {
		return st, 0, fmt.Errorf("request %s: %w", id, errStateNotFound)
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
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if _, err := r.kv.Create(ctx, id, b); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
		return fmt.Errorf("request %s: record state: %w", id, err)
	}
	return nil
}

// errStateChanged: the state changed since it was loaded; load and merge again.
var errStateChanged = errors.New("request state changed concurrently")

// Save writes st over revision rev (0: create). errStateChanged means
// another worker wrote first.
func (r *Requests) Save(ctx context.Context, id string, st requestState, rev uint64) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if rev == 0 {
		_, err = r.kv.Create(ctx, id, b)
	} else {
		_, err = r.kv.Update(ctx, id, b, rev)
	}
	if errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
		return errStateChanged
	}
	return err
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
