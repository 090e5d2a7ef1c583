package stage

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

// ErrCreateDenied marks a stream, bucket or consumer that is missing and
// that this connection's user may not create. Waiting will not make it
// appear: an operator creates it (vmprep setup, as an admin user).
var ErrCreateDenied = errors.New("this user may not create it: run `vmprep setup` as an admin user")

// Denied reports whether err is the server refusing a publish to apiSubject
// (or to a subject under it) for want of permission.
func Denied(err error, apiSubject string) bool {
	if err == nil || !errors.Is(err, nats.ErrPermissionViolation) {
		return false
	}
	msg := strings.ToLower(err.Error())
	want := strings.ToLower(`publish to "` + apiSubject)
	i := strings.Index(msg, want)
	if i < 0 {
		return false
	}
	rest := msg[i+len(want):]
	return strings.HasPrefix(rest, `"`) || strings.HasPrefix(rest, ".")
}

// Create runs create, a JetStream API call through apiSubject that makes
// what (e.g. "stream VMPREP_WORK"), as Call does; a refusal is an error
// wrapping ErrCreateDenied.
func Create(ctx context.Context, nc *nats.Conn, what, apiSubject string, create func(context.Context) error) error {
	denied, err := Call(ctx, nc, apiSubject, create)
	if denied {
		return fmt.Errorf("%s missing and %w", what, ErrCreateDenied)
	}
	return err
}

// Call runs call, a JetStream API request through apiSubject, and reports
// whether the server refused it for want of permission. The server drops
// such a request without answering — the caller would only see its
// timeout — and says why on the connection's asynchronous error: when that
// names apiSubject, call's context is ended at once.
func Call(ctx context.Context, nc *nats.Conn, apiSubject string, call func(context.Context) error) (denied bool, err error) {
	if nc == nil {
		return false, call(ctx)
	}
	before := nc.LastError()
	deniedNow := func() bool {
		err := nc.LastError()
		return !identical(err, before) && Denied(err, apiSubject)
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(20 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if deniedNow() {
					cancel()
					return
				}
			}
		}
	}()
	err = call(ctx)
	if err != nil && deniedNow() {
		return true, err
	}
	return false, err
}

// identical reports whether a and b are the same error value (an error of
// an incomparable type is never identical to another).
func identical(a, b error) (same bool) {
	defer func() {
		if recover() != nil {
			same = false
		}
	}()
	return a == b
}
