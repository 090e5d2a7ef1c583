package stage

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go"

	"github.com/vmprep/vmprep/pkg/messages"
)

// ErrKeyNotFound: the key has no value (never written, or deleted).
var ErrKeyNotFound = errors.New("key not found")

// ErrRelayed means an entry was published by the server as the answer to
// someone's request (a direct get naming the key's subject as its reply
// subject), not written by the key's owner: permissions check only the
// subject a user publishes to, so any user that may direct-get content it
// writes (a host its status, the fetcher its leases and objects) could
// otherwise store that content under a key only another party may write.
var ErrRelayed = errors.New("entry relayed by the server for another user, not written by its owner")

// GetOwned reads the last value of key in key-value bucket bucket by a
// direct get (no consumer), and its revision, refusing an entry the
// server relayed onto the key (ErrRelayed, see messages.Relayed).
// jetstream.KeyValue.Get cannot tell: an entry has no headers.
func GetOwned(ctx context.Context, nc *nats.Conn, bucket, key string) ([]byte, uint64, error) {
	subject := "$KV." + bucket + "." + key
	m, err := nc.RequestWithContext(ctx, "$JS.API.DIRECT.GET.KV_"+bucket+"."+subject, nil)
	if err != nil {
		return nil, 0, fmt.Errorf("read %s/%s: %w", bucket, key, err)
	}
	switch status := m.Header.Get("Status"); status {
	case "":
	case "404":
		return nil, 0, fmt.Errorf("read %s/%s: %w", bucket, key, ErrKeyNotFound)
	default:
		return nil, 0, fmt.Errorf("read %s/%s: server answered %s %s", bucket, key, status, m.Header.Get("Description"))
	}
	if messages.Relayed(m.Header, "KV_"+bucket, subject) {
		return nil, 0, fmt.Errorf("read %s/%s: %w", bucket, key, ErrRelayed)
	}
	switch m.Header.Get("KV-Operation") {
	case "DEL", "PURGE":
		return nil, 0, fmt.Errorf("read %s/%s: %w", bucket, key, ErrKeyNotFound)
	}
	rev, err := strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
	if err != nil {
		return nil, 0, fmt.Errorf("read %s/%s: no revision in the server's answer: %w", bucket, key, err)
	}
	return m.Data, rev, nil
}
