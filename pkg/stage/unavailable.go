package stage

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// errCodeNoPeers is JetStream's "no suitable peers for placement" (a 400):
// a cluster still forming, or with a node down, cannot place a replicated
// stream or consumer yet; it can once the node is back.
const errCodeNoPeers jetstream.ErrorCode = 10005

// Unavailable reports whether err is JetStream not answering yet rather than
// refusing: a call that timed out, no server responding, a connection being
// re-established, or a cluster without a leader or without peers. A process
// that starts while a node is lost or a leader is being elected waits these
// out; a refusal (a permission, a configuration the server rejects, a
// consumer that drifted) it reports at once. ctx is the caller's: once it
// has ended, nothing is worth waiting for.
func Unavailable(ctx context.Context, err error) bool {
	if err == nil || ctx.Err() != nil {
		return false
	}
	var drift *DriftError
	if errors.Is(err, ErrCreateDenied) || errors.As(err, &drift) {
		return false
	}
	var apiErr *jetstream.APIError
	if errors.As(err, &apiErr) {
		// 503 "JetStream not enabled/temporarily unavailable", 500 "no
		// leader" and the like, 408 a server-side timeout.
		return apiErr.Code >= 500 || apiErr.Code == 408 || apiErr.ErrorCode == errCodeNoPeers
	}
	// The call's own timeout (jetstream bounds each API call when the
	// context has no deadline), or the request went nowhere.
	return errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrNoStreamResponse) ||
		errors.Is(err, nats.ErrConnectionReconnecting) || errors.Is(err, nats.ErrDisconnected)
}
